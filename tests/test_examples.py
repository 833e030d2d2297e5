"""The examples keep working: their --quick modes run here."""

import importlib.util
import pathlib

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def load(name):
  spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_quickstart_quick_mode_trains_and_prunes(capsys):
  pytest.importorskip("sklearn")
  before, after = load("quickstart").main(["--quick"])
  # 300 steps leave passive weights far from zero, so the prune costs a
  # little here; the full run (3,000 steps) is lossless (README).
  assert before > 0.9
  assert after > 0.9
  assert "compression ratio of prunable parameters: 10.0x" in capsys.readouterr().out
