"""The examples keep working: their quick modes run here."""

import json

import numpy as np
import pytest

import optax_gsm

pytest.importorskip("examples.models")
# The examples' extra (`pip install -e '.[examples]'`): the training loop's
# progress bars.
pytest.importorskip("tqdm")


@pytest.mark.slow
def test_quickstart_quick_mode_trains_and_prunes(capsys):
  pytest.importorskip("sklearn")
  from examples import quickstart
  before, after = quickstart.main(["--quick"])
  assert before > 0.9
  # 300 steps leave passive weights only partly decayed at momentum 0.99;
  # the full run (3,000 steps) prunes losslessly (README).
  assert after > 0.8
  assert "compression ratio of prunable parameters: 10.0x" in capsys.readouterr().out


def mnist_or_skip():
  pytest.importorskip("tqdm")
  pytest.importorskip("matplotlib")
  from examples import mnist_data, mnist_gsm
  try:
    mnist_data.load_mnist()
  except FileNotFoundError:
    pytest.skip("no MNIST source on this machine")
  return mnist_gsm


@pytest.mark.slow
def test_mnist_pipeline_on_tiny_data(tmp_path):
  mnist_gsm = mnist_or_skip()
  # Lottery tickets are left to the slow test: two more compiled stages.
  (record,) = mnist_gsm.main(["--quick", "--max-train", "2560", "--variants",
                              "lossless", "--magnitude-rounds", "1",
                              "--skip-lottery", "--output-dir", str(tmp_path)])
  assert record["train_size"] == 2560 and record["test_size"] == 10_000
  (gsm,) = record["gsm"]
  assert gsm["nonzero"] == 266_200 // 60  # the final prune keeps exactly Q
  # 100 dense + 140 GSM steps on 2,560 images: far above chance (10%), and
  # the prune changes nothing (passive weights are exact zeros by then; the
  # old default, freeze + decay alone, fell from ~90% to ~25% at the prune).
  assert record["dense"]["accuracy"] > 0.75
  assert gsm["accuracy_after_prune"] == gsm["accuracy_before_prune"] > 0.5
  assert gsm["lossless_settings"]["freeze_mask_at"] == round(0.2 * gsm["steps"])
  assert record["magnitude"]["fine_tuned_accuracy"] > 0.3
  assert len(gsm["layer_density"]) == 3
  for suffix in (".json", ".md", "_density.png"):
    assert (tmp_path / f"mnist_lenet300_60x_quick{suffix}").exists()


@pytest.mark.slow
def test_mnist_dense_checkpoint_is_reused_and_checked(tmp_path):
  mnist_gsm = mnist_or_skip()
  checkpoint = str(tmp_path / "dense.msgpack")
  common = ["--quick", "--max-train", "2560", "--skip-baselines",
            "--dense-checkpoint", checkpoint]
  (record,) = mnist_gsm.main([*common, "--variants", "paper", "freeze",
                              "--output-dir", str(tmp_path)])
  assert set(record["lottery_tickets"]) == {"GSM", "magnitude"}
  assert all(t["accuracy"] > 0.3 for t in record["lottery_tickets"].values())
  common.append("--skip-lottery")
  # A second run reuses the dense model instead of training it again ...
  (again,) = mnist_gsm.main([*common, "--variants", "paper",
                             "--output-dir", str(tmp_path / "again")])
  assert again["dense"] == record["dense"]
  assert again["gsm"][0]["accuracy_after_prune"] == pytest.approx(
      record["gsm"][0]["accuracy_after_prune"])
  # ... also to give GSM another budget than the dense model had ...
  (longer,) = mnist_gsm.main([*common, "--variants", "freeze",
                              "--gsm-epoch-scale", "0.1",
                              "--output-dir", str(tmp_path)])
  assert longer["gsm"][0]["steps"] == 2 * record["gsm"][1]["steps"]
  assert longer["dense"] == record["dense"]
  assert (tmp_path / "mnist_lenet300_60x_quick_gsm0.1.json").exists()
  # ... but never one trained with other settings.
  with pytest.raises(ValueError, match="--dense-checkpoint"):
    mnist_gsm.main([*common, "--seed", "1", "--output-dir", str(tmp_path)])


@pytest.mark.slow  # the examples' model
def test_lenet5_pooling_is_flax_max_pool():
  import flax
  import jax
  import numpy as np

  from examples.models import max_pool_2x2
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 8, 6, 5))
  np.testing.assert_array_equal(max_pool_2x2(x),
                                flax.linen.max_pool(x, (2, 2), (2, 2)))


@pytest.mark.slow
@pytest.mark.parametrize("module", ["update_time", "train_step", "inference",
                                    "width_rounding", "key_buffer"])
def test_benchmarks_quick_mode(module):
  import importlib
  pytest.importorskip("benchmarks._common")
  records = importlib.import_module(f"benchmarks.{module}").main(["--quick"])
  assert records


@pytest.mark.slow
def test_family_step_benchmark_times_every_method_or_says_why_not():
  pytest.importorskip("benchmarks._common")
  from benchmarks import family_step
  (record,) = family_step.main(["--quick"])
  methods = record["methods"]
  assert set(methods) == set(family_step.TARGETS) | {"momentum_sgd"}
  for result in methods.values():  # the MLP: Path-SGD applies too
    assert result["step_ratio"] > 0 and result["state_bytes"] >= 0


@pytest.mark.slow
@pytest.mark.parametrize("no_blocks", [False, True])
def test_structured_example_quick_mode(tmp_path, no_blocks):
  mnist_or_skip()
  from examples import structured_gsm
  # Ranked without branches, the run takes every baseline and averages
  # the saliency.
  record = structured_gsm.main(
      ["--quick", "--out", str(tmp_path)]
      + (["--no-blocks", "--baselines", "l1", "l2", "taylor",
          "--saliency-decay", "0.9"] if no_blocks else []))
  (run,) = record["runs"]
  gsm = run["gsm"]
  if no_blocks:  # every residual branch stays
    assert "ranked" in record and 0 not in gsm["widths"].values()
    assert 0 < run["taylor"]["accuracy_pruned"] <= 1
    assert 1.8 < run["l2"]["flops_reduction"] < 2.2
    assert "| L2 uniform + fine-tune |" in structured_gsm.markdown(record)
  # The shrunk model (batch norm on recalibrated statistics) computes what
  # the masked one computes: exactly, up to float64 roundoff.
  assert gsm["accuracy_shrunk"] == pytest.approx(gsm["accuracy_masked"],
                                                 abs=1e-3)
  assert gsm["shrunk_minus_masked_max_logit_float64"] < 1e-9
  # Both methods reach the FLOPs target (calibrated, within 10%).
  assert 1.8 < gsm["flops_reduction"] < 2.2
  assert 1.8 < run["l1"]["flops_reduction"] < 2.2
  assert run["inference"]["shrunk_batch256_ms"] > 0
  stem = f"mnist_resnet8{'_no_blocks_decay0.9' * no_blocks}_quick"
  for suffix in (".json", ".md", "_channels.png"):
    assert (tmp_path / f"{stem}{suffix}").exists()


@pytest.mark.slow
def test_structured_example_ranks_the_vit_stream(tmp_path):
  mnist_or_skip()
  from examples import structured_gsm
  record = structured_gsm.main(["--quick", "--model", "vit", "--norm", "rms",
                                "--stream", "--out", str(tmp_path)])
  assert record["model"] == "vit_rms"
  assert record["groups"][0] == "patch_embed"
  assert "residual stream" in record["ranked"]
  (run,) = record["runs"]
  widths = run["gsm"]["widths"]
  # One stream width: the embedding and every branch's output projection.
  assert {widths[n] for n in widths if n == "patch_embed"
          or n.endswith(("/attention/out", "/mlp_out"))} == {
              widths["patch_embed"]}
  assert 1.8 < run["gsm"]["flops_reduction"] < 2.2
  # RMSNorms rescaled by `shrink` (and their epsilon by the model): the
  # shrunk model is the masked one, up to float64 roundoff.
  assert run["gsm"]["accuracy_shrunk"] == pytest.approx(
      run["gsm"]["accuracy_masked"], abs=1e-3)
  assert run["gsm"]["shrunk_minus_masked_max_logit"] < 1e-5
  assert run["gsm"]["shrunk_minus_masked_max_logit_float64"] < 1e-9
  assert (tmp_path / "mnist_vit_rms_stream_quick.md").exists()


@pytest.mark.slow
def test_structured_ablation_quick_mode(tmp_path):
  mnist_or_skip()
  from examples import structured_ablation
  structured_ablation.main(["--quick", "--variants", "channels", "default",
                            "--out", str(tmp_path)])
  # --resume keeps the record's variants and baseline and runs the rest
  # (default again), in the variants' order.
  record = structured_ablation.main([
      "--quick", "--resume", "--no-baseline", "--variants", "floor25",
      "default", "--out", str(tmp_path)])
  assert [r["variant"] for r in record["runs"]] == [
      "default", "floor25", "channels"]
  assert "l1" in record
  default, floor, channels = record["runs"]
  assert "--resume" in default["command"]
  assert "--resume" not in channels["command"]
  assert default["options"] == {}
  assert floor["options"] == {"min_kept_share": 0.25}
  # The floor holds in every group; with channels alone no block goes;
  # every variant reaches the target.
  assert min(floor["kept_fraction"]) >= 0.25
  assert channels["blocks_removed"] == []
  for run in record["runs"]:
    assert run["accuracy_shrunk"] == pytest.approx(run["accuracy_masked"],
                                                   abs=1e-3)
    assert 3.5 < run["flops_reduction"] < 4.5
  markdown = (tmp_path / "mnist_resnet8_quick_4x.md").read_text()
  assert "L1 uniform" in markdown
  assert "Variants kept from earlier runs" in markdown
  assert (tmp_path / "mnist_resnet8_quick_4x_channels.png").exists()


def test_structured_ablation_variant_options():
  from examples import structured_ablation
  options = {name: structured_ablation.describe(make(100, 4.0))
             for name, make in structured_ablation.VARIANTS.items()}
  assert options["ramp"] == {"compression_ratio": "schedule"}
  assert options["average90"] == {"saliency_decay": 0.9}
  # Half the width uniform pruning keeps at 4x fewer FLOPs (1/2).
  assert options["floor_half"] == {"min_kept_share": 0.25}
  assert options["early"] == {"freeze_mask_at": 10, "zero_passive_at": 30}


@pytest.mark.slow
def test_structured_ablation_records_an_infeasible_variant(tmp_path):
  mnist_or_skip()
  from examples import structured_ablation
  record = structured_ablation.main([
      "--quick", "--reduction", "1e6", "--variants", "default", "floor25",
      "--no-baseline", "--out", str(tmp_path)])
  assert [r["variant"] for r in record["runs"]] == ["default", "floor25"]
  for run in record["runs"]:
    assert "the most it can be" in run["infeasible"]
  assert "infeasible" in (tmp_path / "mnist_resnet8_quick_1e+06x.md"
                          ).read_text()
  assert not (tmp_path / "mnist_resnet8_quick_1e+06x_channels.png").exists()


@pytest.mark.slow
def test_structured_grid_quick_mode(tmp_path):
  mnist_or_skip()
  from examples import structured_grid
  out = ["--quick", "--out", str(tmp_path)]
  first = structured_grid.main([*out, "--methods", "gsm", "l1"])
  assert set(first["cells"][0]["methods"]) == {"gsm", "l1"}
  first = json.loads(json.dumps(first["cells"][0]["methods"]))
  # Resumed, the cell gains the methods it lacks and keeps the others.
  record = structured_grid.main([*out, "--resume"])
  (cell,) = record["cells"]
  methods = cell["methods"]
  assert set(methods) == set(structured_grid.METHODS)
  assert {m: methods[m] for m in first} == first
  # The cell keeps both commands that ran its methods.
  assert [c.split("--quick ")[1] for c in cell["commands"]] == [
      f"--out {tmp_path} --methods gsm l1", f"--out {tmp_path} --resume"]
  assert structured_grid.markdown(record).count("--resume") == 1
  # Every method reaches the FLOPs target; C-SGD merges to the uniform
  # baseline's widths, so its model costs what that one costs.
  for result in methods.values():
    assert result["flops_reduction"] >= 2.0
  assert methods["csgd"]["flops_reduction"] == pytest.approx(
      methods["l1"]["flops_reduction"])
  assert (tmp_path / "mnist_lenet5_quick.png").exists()
  # Resumed, a record with every cell runs nothing and keeps them.
  again = structured_grid.main([*out, "--resume"])
  assert again["cells"] == json.loads(json.dumps(record["cells"]))
  # --rerun runs GSM again (the same run: the same accuracy), nothing else.
  rerun = structured_grid.main([*out, "--resume", "--rerun", "gsm"])
  rerun_methods = rerun["cells"][0]["methods"]
  assert rerun_methods["gsm"]["accuracy"] == methods["gsm"]["accuracy"]
  assert rerun_methods["gsm"]["wall_seconds"] != methods["gsm"]["wall_seconds"]
  assert {m: rerun_methods[m] for m in ("l1", "taylor", "csgd")} == {
      m: again["cells"][0]["methods"][m] for m in ("l1", "taylor", "csgd")}


def test_structured_grid_verdicts():
  from examples import structured_grid

  def cell(seed, reduction, gsm, l1):
    return {"seed": seed, "budget": 500, "reduction": reduction,
            "dense": {"accuracy": 0.99},
            "methods": {"gsm": {"accuracy": gsm, "flops_reduction": 4.1},
                        "l1": {"accuracy": l1, "flops_reduction": 4.0}}}

  record = {"reductions": [2.0, 4.0, 8.0], "budgets": [500],
            "methods": ["gsm", "l1"],
            "cells": [cell(0, 2.0, 0.98, 0.96), cell(1, 2.0, 0.97, 0.95),
                      cell(0, 4.0, 0.95, 0.96), cell(1, 4.0, 0.97, 0.96),
                      cell(0, 8.0, 0.96, 0.96), cell(1, 8.0, 0.11, 0.95)]}
  rows = structured_grid.verdicts(record)
  # 2x: ahead by 2 points, L1's seeds 1 point apart; 4x: level (GSM's own
  # spread is not noise); 8x: collapsed on one seed, behind by 42 points,
  # not a tie within its own 85-point spread.
  assert [r["verdict"] for r in rows] == ["win", "tie", "loss"]
  assert rows[0]["margin"] == pytest.approx(0.02)
  assert rows[0]["noise"] == pytest.approx(0.01)
  assert rows[1]["noise"] == 0.0
  assert rows[2]["best"] == "l1"
  assert rows[2]["noise"] == pytest.approx(0.01)


@pytest.mark.slow
def test_n_of_m_example_quick_mode(tmp_path):
  mnist_or_skip()
  from examples import structured_gsm
  record = structured_gsm.main(["--quick", "--n-of-m", "2", "4", "--out",
                                str(tmp_path)])
  assert record["n_of_m"]["gsm_pruned"] > 0.1
  assert (tmp_path / "mnist_lenet300_2of4_quick.md").exists()


@pytest.mark.slow
def test_path_sgd_example_quick_mode(tmp_path):
  mnist_or_skip()
  from examples import path_sgd
  record = path_sgd.main(["--quick", "--out", str(tmp_path)])
  assert set(record["runs"]) == {"path-sgd", "sgd", "adam"}
  run = record["runs"]["path-sgd"]
  # Rescaling the start leaves Path-SGD's curve (almost: float32) alone.
  gap = max(abs(a - b) for a, b in zip(run["balanced"], run["unbalanced"]))
  assert gap < 0.02
  for suffix in (".json", ".md", ".png"):
    assert (tmp_path / f"mnist_mlp_quick{suffix}").exists()


@pytest.mark.slow
def test_lossless_budget_example_quick_mode(tmp_path):
  mnist_or_skip()
  from examples import lossless_budget
  record = lossless_budget.main(["--quick", "--out", str(tmp_path)])
  assert [r["variant"] for r in record["runs"]] == ["zero", "decay"]
  zero = record["runs"][0]
  # The default removes exact zeros: the prune changes nothing.
  assert zero["removed_mass_fraction"] == 0.0
  assert zero["accuracy_after_prune"] == zero["accuracy_before_prune"]
  assert (tmp_path / "mnist_lenet300_60x_quick.png").exists()


@pytest.mark.slow
def test_low_rank_example_quick_mode(tmp_path):
  mnist_or_skip()
  from examples import low_rank
  record = low_rank.main(["--quick", "--out", str(tmp_path)])
  assert set(record["ranks"]) == {"Dense_0/kernel", "Dense_1/kernel"}
  assert record["counts"]["params_after"] < record["counts"]["params_before"]
  assert all(0.1 < a <= 1.0 for a in record["accuracy"].values())
  assert (tmp_path / "mnist_lenet300_quick.md").exists()


@pytest.mark.slow
def test_csgd_example_quick_mode(tmp_path):
  mnist_or_skip()
  from examples import csgd
  record = csgd.main(["--quick", "--out", str(tmp_path)])
  (run,) = record["runs"]
  assert run["csgd"]["flops_reduction"] > 1.5
  assert run["gsm"]["flops_reduction"] >= run["csgd"]["flops_reduction"]
  assert (tmp_path / "mnist_lenet5_quick.md").exists()


@pytest.mark.slow
def test_lasso_example_quick_mode(tmp_path):
  mnist_or_skip()
  from examples import lasso_channel
  record = lasso_channel.main(["--quick", "--out", str(tmp_path)])
  (run,) = record["runs"]
  lasso = run["lasso"]
  # The calibrated widths reach the FLOPs target (within 10%), and each
  # layer's reconstruction is a fit, not noise.
  assert 1.8 < lasso["flops_reduction"] < 2.2
  assert all(layer["relative_error"] < 0.5 for layer in lasso["layers"])
  assert lasso["accuracy_pruned"] > 0.1 and run["l1"]["accuracy_pruned"] > 0
  assert run["inference"]["shrunk_batch256_ms"] > 0
  assert (tmp_path / "mnist_lenet5_quick.md").exists()


@pytest.mark.slow
def test_accuracy_curve_from_two_seeds(tmp_path):
  mnist_or_skip()
  from examples import accuracy_curve, mnist_gsm
  for seed in (0, 1):
    mnist_gsm.main(["--quick", "--ratios", "10", "--variants", "lossless",
                    "--skip-lottery", "--seed", str(seed), "--output-dir",
                    str(tmp_path / f"seed{seed}")])
  # A recipe variant with its lottery tickets, as a third directory.
  mnist_gsm.main(["--quick", "--ratios", "10", "--variants", "freeze",
                  "--freeze-at", "0.5", "--gsm-momentum", "0.9",
                  "--skip-baselines", "--output-dir", str(tmp_path / "recipe")])
  rows = accuracy_curve.main(["--records", str(tmp_path)])
  # Quick runs have a shortened budget, which the labels say.
  methods = {row["method"] for row in rows}
  assert methods == {f"{m}, 0.05 of the budget" for m in (
      "GSM lossless", "gradual magnitude", "magnitude one-shot",
      "magnitude + fine-tuning", "GSM freeze@0.5, momentum 0.9",
      "lottery ticket, GSM mask", "lottery ticket, magnitude mask")}
  assert {row["seed"] for row in rows} == {0, 1}
  # Every point names the command that ran it.
  assert all(row["command"].startswith(
      "python -m examples.mnist_gsm --quick --ratios 10 --variants ")
             for row in rows)
  text = (tmp_path / "mnist_lenet300_curve.md").read_text()
  assert "2 seeds" in text
  assert (tmp_path / "mnist_lenet300_curve.png").exists()


def test_accuracy_curve_counts_a_repeated_run_once(tmp_path):
  from examples import accuracy_curve

  def record(folder, seed, accuracy):
    path = tmp_path / folder / "mnist_lenet300_60x.json"
    path.parent.mkdir()
    path.write_text(json.dumps({
        "compression_ratio": 60.0, "epoch_scale": 1.0, "seed": seed,
        "dense": {"accuracy": 0.98},
        "gradual_magnitude": {"accuracy": accuracy, "steps": 10,
                              "wall_seconds": 1.0}}))

  record("a_seed0", 0, 0.97)
  record("b_seed1", 1, 0.95)
  record("c_rerun", 0, 0.90)  # the same configuration and seed again
  rows = accuracy_curve.main(["--records", str(tmp_path)])
  assert [row["repeat"] for row in rows] == [False, False, True]
  text = (tmp_path / "mnist_lenet300_curve.md").read_text()
  assert "96.00% (95.00%-97.00%, 2 seeds)" in text
  assert "Repeated runs" in text and "90.00% (c_rerun" in text


@pytest.mark.slow
def test_resnet_unstructured_example_quick_mode(tmp_path):
  mnist_or_skip()
  from examples import resnet_unstructured
  record = resnet_unstructured.main(["--quick", "--out", str(tmp_path)])
  (run,) = record["runs"]
  # Both methods end with exactly 1/C of the prunable weights.
  target = optax_gsm.num_active(run["gsm"]["prunable"], run["ratio"])
  assert run["gsm"]["nonzero"] == target
  assert run["gradual_magnitude"]["nonzero"] == target
  for suffix in (".json", ".md", "_density.png"):
    assert (tmp_path / f"mnist_resnet8_quick{suffix}").exists()


@pytest.mark.slow
def test_adamw_example_quick_mode(tmp_path):
  mnist_or_skip()
  from examples import adamw_gsm
  record = adamw_gsm.main(["--quick", "--out", str(tmp_path)])
  runs = {r["optimizer"]: r for r in record["runs"]}
  assert set(runs) == {"AdamW", "GSM AdamW", "momentum SGD", "GSM momentum",
                       "GM AdamW", "GM momentum"}
  for name in ("GSM AdamW", "GSM momentum"):  # the lossless default holds
    assert runs[name]["accuracy_after_prune"] == runs[name]["accuracy"]
    assert runs[name]["largest_removed"] == 0.0
  for name in ("GSM AdamW", "GSM momentum", "GM AdamW", "GM momentum"):
    assert runs[name]["compression"] == pytest.approx(10.0, rel=1e-3)
  assert (tmp_path / "mnist_vit_quick.md").exists()


@pytest.mark.slow
def test_char_gpt_example_quick_mode(tmp_path):
  pytest.importorskip("matplotlib")
  from examples import char_gpt
  record = char_gpt.main(["--quick", "--out", str(tmp_path)])
  run = record["runs"][0]
  # The scan-stacked model shrinks to exactly the masked one, and GSM's
  # lossless default leaves the trained model unchanged by the shrink.
  assert run["gsm"]["shrunk_minus_masked_max_logit"] < 1e-4
  assert run["gsm"]["shrunk_minus_masked_max_logit_float64"] < 1e-9
  assert abs(run["gsm"]["shrunk"]["bits_per_char"]
             - run["gsm"]["trained"]["bits_per_char"]) < 1e-4
  assert set(record["group_sizes"]) == {"layers/attention/query",
                                        "layers/mlp_in"}
  for method in ("gsm", "l1", "l2", "taylor"):
    assert run[method]["flops_reduction"] >= 2.0
  for suffix in (".json", ".md", ".png"):
    assert (tmp_path / f"stdlib_gpt_quick{suffix}").exists()


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_char_gpt_example_prunes_the_stream(tmp_path, norm):
  pytest.importorskip("matplotlib")
  from examples import char_gpt
  # The RMSNorm run also ranks by the averaged saliency.
  record = char_gpt.main(["--quick", "--no-layers", "--stream",
                          "--norm", norm, "--out", str(tmp_path)]
                         + ["--saliency-decay", "0.9"] * (norm == "rms"))
  run = record["runs"][0]
  assert set(record["group_sizes"]) == {"embed", "layers/attention/query",
                                        "layers/mlp_in"}
  assert [u for u in record["unprunable"]
          if u[1] != "removed by Groups.without"] == [["head", "model output"]]
  for method in ("gsm", "l1", "l2", "taylor"):
    assert run[method]["flops_reduction"] >= 2.0
  # The shrunk model's norms run over the channels kept: under LayerNorm a
  # model of its own, whose logits the record compares with the masked
  # model's; under RMSNorm (scales and epsilon rescaled) the masked model,
  # up to float64 roundoff.
  difference = run["gsm"]["shrunk_minus_masked_max_logit_float64"]
  assert run["gsm"]["widths"]["embed"] < 32  # the quick model's width
  assert difference < 1e-9 if norm == "rms" else difference > 1e-2
  suffix = "_rms_decay0.9" if norm == "rms" else ""
  assert (tmp_path / f"stdlib_gpt_no_layers_stream{suffix}_quick.json").exists()
  assert ("saliency_decay=0.9" in record["structures"]) == (norm == "rms")


@pytest.mark.slow
def test_char_gpt_unstructured_example_quick_mode(tmp_path):
  pytest.importorskip("matplotlib")
  from examples import char_gpt_unstructured
  record = char_gpt_unstructured.main(["--quick", "--out", str(tmp_path)])
  runs = {r["method"]: r for r in record["runs"]}
  assert set(runs) == {"GSM AdamW", "GM AdamW", "GSM momentum", "GM momentum"}
  for run in runs.values():
    assert run["compression"] == pytest.approx(10.0, rel=1e-3)
  for name in ("GSM AdamW", "GSM momentum"):
    gsm = runs[name]  # the lossless default: the prune changes nothing
    assert gsm["largest_removed"] == 0.0
    assert gsm["final"] == gsm["trained"]
  for suffix in (".json", ".md", ".png"):
    assert (tmp_path / f"stdlib_gpt_10x_quick{suffix}").exists()


def test_uniform_baseline_ranks_by_the_norm_asked_for():
  # Unit 0's output weights are 1, 1, 1, 1 (L1 4, L2 2); unit 1's are
  # 3, 0, 0, 0 (L1 3, L2 3): L1 keeps unit 0, L2 unit 1.
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  from examples.structured_gsm import norm_keep
  model = nn.Sequential([nn.Dense(2), nn.relu, nn.Dense(1)])
  x = jnp.ones((1, 4))
  variables = model.init(jax.random.key(0), x)
  kernel = np.array([[1.0, 3.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
  params = {"layers_0": {**variables["params"]["layers_0"],
                         "kernel": jnp.asarray(kernel)},
            "layers_2": variables["params"]["layers_2"]}
  groups = optax_gsm.structured.channel_groups(model.apply,
                                               {"params": params}, x)
  (group,) = groups.channels
  kept = [norm_keep(groups, params, [1], order).channels[0].tolist()
          for order in (1, 2)]
  assert group.size == 2 and kept == [[True, False], [False, True]]


def test_plot_draws_groups_of_removed_branches_as_removed():
  from examples.structured_gsm import group_in_block
  assert group_in_block("stage1_block0/conv1", "stage1_block0")
  assert not group_in_block("stage1_block1/conv1", "stage1_block0")
  assert group_in_block("layer1/attention/query", "layer1/attention+attention_norm")
  assert group_in_block("layer2/mlp_in", "layer2/mlp_in+mlp_norm+mlp_out")
  assert not group_in_block("layer2/attention/query",
                     "layer2/mlp_in+mlp_norm+mlp_out")


def test_stdlib_corpus_windows_predict_the_next_character():
  from examples import text_data
  corpus = text_data.load_corpus(32, max_chars=20_000, max_test_windows=5)
  x, y = corpus.train
  assert x.shape[1] == 32 and x.dtype == y.dtype
  np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
  np.testing.assert_array_equal(x[1:, 0], y[:-1, -1])
  assert corpus.test[0].shape == (5, 32)
  assert 0 <= x.min() and x.max() < text_data.VOCAB
  assert corpus.description["characters"] == 20_000


def test_examples_write_under_the_working_directory_by_default():
  # Regression: the default output was the source tree's benchmarks/results.
  from examples import measure
  assert not measure.RESULTS.is_absolute()
  for name in ("adamw_gsm", "char_gpt", "char_gpt_unstructured", "csgd",
               "lasso_channel", "low_rank", "path_sgd", "resnet_unstructured",
               "structured_gsm"):
    module = __import__(f"examples.{name}", fromlist=["OUT"])
    assert module.OUT.parts[0] == "results", name


@pytest.mark.parametrize("name", ["gradual_magnitude", "sparse_inference",
                                  "low_rank_inference"])
def test_library_modules_refuse_to_run_as_scripts(name):
  import runpy
  with pytest.raises(SystemExit, match="is a module, not a script"):
    runpy.run_module(f"examples.{name}", run_name="__main__")
