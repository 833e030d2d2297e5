"""The public API: the API reference documents exactly each module's `__all__`."""

import importlib
import pathlib
import re

import pytest

import optax_gsm

API_PAGES = pathlib.Path(__file__).parent.parent / "docs" / "api"
SUBPACKAGES = ("structured", "centripetal", "low_rank", "path_norm", "lasso",
               "export")


def _documented(module: str) -> tuple[list[str], list[str]]:
  """The names of a module's API page: its summary table, and those with
  an ``autoclass`` or ``autofunction`` entry."""
  page = API_PAGES / f"{module.split('.')[1] if '.' in module else 'core'}.md"
  text = page.read_text()
  summary = re.search(r"\.\. autosummary::\n\n((?:   \w+\n)+)", text).group(1)
  entries = re.findall(r"^\.\. auto(?:class|function):: (\w+)$", text, re.MULTILINE)
  return summary.split(), entries


@pytest.mark.skipif(not API_PAGES.exists(), reason="outside the source tree")
@pytest.mark.parametrize("module", ("optax_gsm",) + tuple(
    f"optax_gsm.{name}" for name in SUBPACKAGES))
def test_every_public_name_is_in_the_api_reference(module):
  names = list(importlib.import_module(module).__all__)
  if module == "optax_gsm":
    names = [n for n in names if n not in SUBPACKAGES]
  summary, entries = _documented(module)
  assert sorted(summary) == sorted(names)
  assert sorted(entries) == sorted(names)


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
