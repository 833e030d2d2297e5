"""The examples keep working: their --quick modes run here."""

import importlib.util
import pathlib
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def load(name):
  # The examples import their sibling modules by plain name.
  if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))
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


def test_mnist_pipeline_quick_mode(tmp_path):
  pytest.importorskip("tqdm")
  pytest.importorskip("matplotlib")
  mnist_data = load("mnist_data")
  try:
    mnist_data.load_mnist()
  except FileNotFoundError:
    pytest.skip("no MNIST source on this machine")
  mnist_gsm = load("mnist_gsm")
  (record,) = mnist_gsm.main(["--quick", "--variants", "paper", "freeze",
                              "--magnitude-rounds", "1",
                              "--output-dir", str(tmp_path)])
  q = int(266_200 // 60)
  for gsm in record["gsm"]:
    assert gsm["nonzero"] == q  # the final prune keeps exactly Q
    assert 0.0 <= gsm["accuracy_after_prune"] <= 1.0
  assert record["dense"]["accuracy"] > 0.5
  assert set(record["lottery_tickets"]) == {"GSM", "magnitude"}
  densities = record["gsm"][0]["layer_density"]
  assert len(densities) == 3
  for suffix in (".json", ".md", "_density.png"):
    assert (tmp_path / f"mnist_lenet300_60x_quick{suffix}").exists()
