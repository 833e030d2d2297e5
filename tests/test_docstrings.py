"""The examples in the public docstrings run and print what they say."""

import doctest
import importlib
import pkgutil

import pytest

import optax_gsm


def _library_modules():
  return [importlib.import_module(info.name) for info in pkgutil.walk_packages(
      optax_gsm.__path__, prefix="optax_gsm.")]


def _with_examples():
  finder = doctest.DocTestFinder()
  return [m for m in _library_modules()
          if any(test.examples for test in finder.find(m))]


@pytest.mark.parametrize("module", _with_examples(),
                         ids=lambda m: m.__name__)
def test_docstring_examples(module):
  result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
  assert result.failed == 0
