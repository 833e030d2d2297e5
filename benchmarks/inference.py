"""What a pruned model costs to store and to run: dense vs sparse, one run.

For LeNet-300-100 at 60x and LeNet-5 at 125x and 300x, from the pruned
models the MNIST example saved (``benchmarks/results/lossless/*.gsm``):

- file size: the dense params as Flax msgpack, that file gzipped, and
  ``optax_gsm.export.save_sparse`` with float32 values (bit-exact) and float16
  values (lossy), each as a ratio to the dense file;
- test accuracy of each loaded model on MNIST (float32 equals the pruned
  model exactly);
- CPU inference time at batch 1 and 256 of the dense pruned model and of the
  same model with BCOO Dense kernels (``optax_gsm.export.to_bcoo`` +
  ``examples.sparse_inference.apply_with_bcoo``), jitted, as a ratio.

    python -m benchmarks.inference
    python -m benchmarks.inference --quick   # random models pruned by |w|, no JSON

Produce the models first (about 10 minutes each for LeNet-5 on 2 cores):

    python -m examples.mnist_gsm --model lenet300 --ratios 60 --epoch-scale 0.1 \\
        --variants lossless --skip-baselines --skip-lottery \\
        --output-dir benchmarks/results/lossless
    python -m examples.mnist_gsm --model lenet5 --ratios 125 300 --epoch-scale 0.1 \\
        --variants lossless --skip-baselines --skip-lottery \\
        --output-dir benchmarks/results/lossless
"""

import argparse
import gzip
import io
import pathlib

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

import optax_gsm
from benchmarks._common import RESULTS, print_table, time_call, write_record
from examples.models import MNIST_MODELS
from examples.sparse_inference import apply_with_bcoo

MODELS = (("lenet300", 60.0), ("lenet5", 125.0), ("lenet5", 300.0))
# Deep Compression (Han et al., ICLR 2016): pruning + quantisation + Huffman.
DEEP_COMPRESSION = {"lenet300": 40.0, "lenet5": 39.0}


def model_file(name: str, ratio: float) -> pathlib.Path:
  return (RESULTS / "lossless"
          / f"mnist_{name}_{ratio:g}x_scale0.1_lossless.gsm")


def load_pruned(name: str, ratio: float, quick: bool):
  model = MNIST_MODELS[name]()
  params = model.init(jax.random.PRNGKey(0), jnp.ones((1, 28, 28, 1)))[
      "params"]
  if quick:
    pruned, _ = optax_gsm.prune(params, ratio)
    return model, jax.tree.map(np.asarray, pruned)
  path = model_file(name, ratio)
  if not path.exists():
    raise SystemExit(f"{path} is missing: run the MNIST example first (see "
                     "`python -m benchmarks.inference --help`), or --quick.")
  return model, optax_gsm.export.load_sparse(path)


def file_sizes(params, directory: pathlib.Path) -> dict:
  dense = flax.serialization.msgpack_serialize(params)
  gzipped = io.BytesIO()
  with gzip.GzipFile(fileobj=gzipped, mode="wb", compresslevel=9) as f:
    f.write(dense)
  return {
      "dense_msgpack": len(dense),
      "dense_msgpack_gzip": len(gzipped.getvalue()),
      "sparse_float32": optax_gsm.export.save_sparse(directory / "f32.gsm", params),
      "sparse_float16": optax_gsm.export.save_sparse(directory / "f16.gsm", params,
                                              values_dtype=jnp.float16),
  }


def accuracies(model, params, directory, test) -> dict:
  if test is None:
    return {}
  images, labels = test
  apply = jax.jit(lambda p, x: jnp.argmax(model.apply({"params": p}, x), -1))
  result = {}
  for key, loaded in (("pruned", params),
                      ("sparse_float32", optax_gsm.export.load_sparse(
                          directory / "f32.gsm")),
                      ("sparse_float16", optax_gsm.export.load_sparse(
                          directory / "f16.gsm"))):
    result[key] = float(np.mean(np.asarray(apply(loaded, images)) == labels))
  return result


def inference_times(model, params) -> dict:
  dense_apply = jax.jit(lambda p, x: model.apply({"params": p}, x))
  sparse_apply = jax.jit(lambda p, x: apply_with_bcoo(model, {"params": p},
                                                      x))
  sparse_params = optax_gsm.export.to_bcoo(params)
  times = {}
  for batch in (1, 256):
    x = jnp.asarray(np.random.default_rng(0).normal(
        size=(batch, 28, 28, 1)), jnp.float32)
    np.testing.assert_allclose(sparse_apply(sparse_params, x),
                               dense_apply(params, x), atol=1e-4)
    times[f"dense_batch{batch}"] = time_call(
        lambda x=x: jax.block_until_ready(dense_apply(params, x)))
    times[f"bcoo_batch{batch}"] = time_call(
        lambda x=x: jax.block_until_ready(sparse_apply(sparse_params, x)))
  return times


def main(argv=None):
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog="\n\n".join(__doc__.split("\n\n")[1:]))
  parser.add_argument("--quick", action="store_true",
                      help="random models pruned by magnitude, no accuracy, "
                      "no JSON")
  args = parser.parse_args(argv)
  test = None
  if not args.quick:
    from examples.mnist_data import load_mnist
    data = load_mnist()
    images = ((data.test_images.astype(np.float32) / 255.0 - 0.1307)
              / 0.3081).reshape(-1, 28, 28, 1)
    test = (jnp.asarray(images), data.test_labels)
  scratch = RESULTS / "inference_scratch"
  scratch.mkdir(parents=True, exist_ok=True)
  records, size_rows, time_rows = [], [], []
  for name, ratio in MODELS:
    model, params = load_pruned(name, ratio, args.quick)
    sizes = file_sizes(params, scratch)
    accuracy = accuracies(model, params, scratch, test)
    times = inference_times(model, params)
    records.append({"model": name, "compression_ratio": ratio,
                    "file_bytes": sizes, "accuracy": accuracy,
                    "seconds": times})
    dense = sizes["dense_msgpack"]
    size_rows.append([
        f"{name} {ratio:g}x", f"{dense:,}",
        f"{dense / sizes['dense_msgpack_gzip']:.1f}x",
        f"{dense / sizes['sparse_float32']:.1f}x",
        f"{dense / sizes['sparse_float16']:.1f}x",
        f"{DEEP_COMPRESSION[name]:.0f}x",
        *(f"{accuracy[k]:.2%}" if accuracy else "-"
          for k in ("pruned", "sparse_float32", "sparse_float16"))])
    time_rows.append([f"{name} {ratio:g}x", *(
        f"{times[f'{kind}_batch{b}'] * 1e3:.3f}"
        for b in (1, 256) for kind in ("dense", "bcoo")),
        f"{times['dense_batch1'] / times['bcoo_batch1']:.2f}x",
        f"{times['dense_batch256'] / times['bcoo_batch256']:.2f}x"])
  for path in scratch.iterdir():
    path.unlink()
  scratch.rmdir()
  size_table = print_table(
      ["model", "dense msgpack B", "gzip", "save_sparse f32",
       "save_sparse f16", "Deep Compression", "acc pruned", "acc f32 file",
       "acc f16 file"], size_rows)
  time_table = print_table(
      ["model", "dense ms (b=1)", "BCOO ms (b=1)", "dense ms (b=256)",
       "BCOO ms (b=256)", "BCOO speed-up b=1", "BCOO speed-up b=256"],
      time_rows)
  if not args.quick:
    write_record("inference", {"results": records, "size_table": size_table,
                               "time_table": time_table})
  return records


if __name__ == "__main__":
  main()
