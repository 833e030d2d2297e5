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
  checkpoint = str(tmp_path / "dense.msgpack")
  (record,) = mnist_gsm.main(["--quick", "--variants", "lossless", "freeze",
                              "--magnitude-rounds", "1",
                              "--output-dir", str(tmp_path),
                              "--dense-checkpoint", checkpoint])
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

  # A second run reuses the dense model instead of training it again ...
  (again,) = mnist_gsm.main(["--quick", "--variants", "lossless",
                             "--skip-baselines", "--skip-lottery",
                             "--output-dir", str(tmp_path / "again"),
                             "--dense-checkpoint", checkpoint])
  assert again["dense"] == record["dense"]
  assert again["gsm"][0]["accuracy_after_prune"] == pytest.approx(
      record["gsm"][0]["accuracy_after_prune"])
  # ... also to give GSM another budget than the dense model had ...
  (longer,) = mnist_gsm.main(["--quick", "--variants", "freeze",
                              "--gsm-epoch-scale", "0.1",
                              "--skip-baselines", "--skip-lottery",
                              "--output-dir", str(tmp_path),
                              "--dense-checkpoint", checkpoint])
  assert longer["gsm"][0]["steps"] == 2 * record["gsm"][1]["steps"]
  assert longer["dense"] == record["dense"]
  assert (tmp_path / "mnist_lenet300_60x_quick_gsm0.1.json").exists()
  # ... but never one trained with other settings.
  with pytest.raises(ValueError, match="--dense-checkpoint"):
    mnist_gsm.main(["--quick", "--seed", "1", "--output-dir", str(tmp_path),
                    "--dense-checkpoint", checkpoint])


def test_lenet5_pooling_is_flax_max_pool():
  flax = pytest.importorskip("flax")
  import jax
  import numpy as np
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 8, 6, 5))
  np.testing.assert_array_equal(
      load("mnist_models").max_pool_2x2(x),
      flax.linen.max_pool(x, (2, 2), (2, 2)))
