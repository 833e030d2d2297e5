"""The official PyTorch GSM step, timed on the same shapes as update_time.py.

Official code (DingXiaoH/GSM-SGD): metric ``|g * w|`` over all kernels,
threshold from ``torch.topk`` over their concatenation, gradients multiplied
by ``metric >= threshold``, then ``torch.optim.SGD(momentum, weight_decay)``.
Timed beside plain ``torch.optim.SGD`` and ``optax_gsm.gsm_sgd`` in the same
run. Needs the optional ``torch`` (``pip install torch==2.13.0``, CPU build).

    python -m benchmarks.torch_official
    python -m benchmarks.torch_official --quick
"""

import argparse

import jax
import numpy as np

import optax_gsm
from benchmarks._common import print_table, time_call, write_record
from benchmarks.update_time import COMPRESSION, make_params, measure


def torch_steps(params_np, grads_np):
  import torch  # optional; imported here so the module loads without it

  tensors = [torch.nn.Parameter(torch.from_numpy(np.array(p)))
             for p in params_np]
  grads = [torch.from_numpy(np.array(g)) for g in grads_np]
  kernels = [i for i, p in enumerate(tensors) if p.dim() >= 2]
  q = optax_gsm.num_active(sum(tensors[i].numel() for i in kernels),
                           COMPRESSION)
  sgd = torch.optim.SGD(tensors, lr=0.1, momentum=0.9, weight_decay=5e-4)

  def official():
    for p, g in zip(tensors, grads):
      p.grad = g.clone()
    with torch.no_grad():
      metric = torch.cat([(tensors[i].grad * tensors[i]).abs().view(-1)
                          for i in kernels])
      threshold = torch.topk(metric, q, sorted=False)[0].min()
      for i in kernels:
        tensors[i].grad.mul_(((tensors[i].grad * tensors[i]).abs()
                              >= threshold).float())
    sgd.step()

  def plain():
    for p, g in zip(tensors, grads):
      p.grad = g.clone()
    sgd.step()

  return {"torch_official_gsm": official, "torch_sgd": plain}, torch.__version__


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", type=float, nargs="+",
                      default=[1e5, 1e6, 1e7, 1e8])
  parser.add_argument("--quick", action="store_true", help="1e4 only, no JSON")
  args = parser.parse_args(argv)
  sizes = [1e4] if args.quick else args.sizes
  rows, records = [], []
  torch_version = None
  for size in sizes:
    params = make_params(int(size))
    grads = make_params(int(size), seed=1)
    total = sum(x.size for x in jax.tree.leaves(params))
    steps, torch_version = torch_steps(
        [np.asarray(x) for x in jax.tree.leaves(params)],
        [np.asarray(x) for x in jax.tree.leaves(grads)])
    times = {name: time_call(fn) for name, fn in steps.items()}
    times["optax_gsm"] = measure("gsm", params, grads)["seconds"]
    times["optax_momentum_sgd"] = measure("momentum_sgd", params, grads)[
        "seconds"]
    record = {"num_params": total, **{f"{k}_seconds": v
                                      for k, v in times.items()}}
    record["torch_official_over_optax_gsm"] = (
        times["torch_official_gsm"] / times["optax_gsm"])
    records.append(record)
    rows.append([f"{total:,}", f"{times['torch_sgd'] * 1e3:.2f}",
                 f"{times['torch_official_gsm'] * 1e3:.2f}",
                 f"{times['optax_momentum_sgd'] * 1e3:.2f}",
                 f"{times['optax_gsm'] * 1e3:.2f}",
                 f"{record['torch_official_over_optax_gsm']:.2f}x"])
    print(rows[-1], flush=True)
  table = print_table(["params", "torch SGD ms", "torch official GSM ms",
                       "optax momentum SGD ms", "optax_gsm ms",
                       "official / optax_gsm"], rows)
  if not args.quick:
    write_record("torch_official", {"torch": torch_version,
                                    "compression_ratio": COMPRESSION,
                                    "results": records, "table": table})
  return records


if __name__ == "__main__":
  main()
