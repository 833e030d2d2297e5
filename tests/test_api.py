"""The public API: README's tables list exactly each module's `__all__`."""

import importlib
import pathlib
import re

import pytest

import optax_gsm

README = pathlib.Path(__file__).parent.parent / "README.md"
SUBPACKAGES = ("structured", "centripetal", "low_rank", "path_norm", "lasso",
               "export")


def _readme_tables():
  """{module: [names]} from README's ``### `module` `` API tables."""
  tables, module = {}, None
  for line in README.read_text().splitlines():
    heading = re.fullmatch(r"### `(optax_gsm[\w.]*)`", line)
    if heading:
      module = heading.group(1)
      tables[module] = []
    elif module and line.startswith("| `"):
      tables[module].append(re.match(r"\| `(\w+)`", line).group(1))
    elif module and tables[module] and not line.startswith("|"):
      module = None
  return tables


@pytest.mark.skipif(not README.exists(), reason="outside the source tree")
@pytest.mark.parametrize("module", ("optax_gsm",) + tuple(
    f"optax_gsm.{name}" for name in SUBPACKAGES))
def test_readme_api_table_is_the_modules_all(module):
  names = list(importlib.import_module(module).__all__)
  if module == "optax_gsm":
    names = [n for n in names if n not in SUBPACKAGES]
  assert _readme_tables()[module] == names


@pytest.mark.parametrize("module", ("optax_gsm",) + tuple(
    f"optax_gsm.{name}" for name in SUBPACKAGES))
def test_all_is_sorted_and_every_name_exists(module):
  mod = importlib.import_module(module)
  assert list(mod.__all__) == sorted(mod.__all__)
  for name in mod.__all__:
    assert getattr(mod, name).__doc__, name


def test_subpackages_are_reachable_from_the_top():
  for name in SUBPACKAGES:
    assert getattr(optax_gsm, name).__name__ == f"optax_gsm.{name}"
