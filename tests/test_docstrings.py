"""The examples in the public docstrings run and print what they say."""

import doctest

import pytest

from optax_gsm import _csgd, _gsm, _path_sgd, _shrink, _tracing


@pytest.mark.parametrize("module", [_gsm, _tracing, _shrink, _path_sgd, _csgd])
def test_docstring_examples(module):
  result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
  assert result.attempted > 0 and result.failed == 0
