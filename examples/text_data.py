"""A character-level text corpus every machine with Python has: the source
of the running interpreter's standard library.

The top-level ``*.py`` files of ``sysconfig.get_paths()["stdlib"]``, sorted
by name and joined, as bytes; bytes above 127 (rare: names and strings in
other scripts) become 0, so the vocabulary is the 128 ASCII codes. The
first 95% of the text trains, the last 5% tests; each split is cut into
non-overlapping windows of ``context + 1`` characters, the model reads the
first ``context`` and predicts each next one.

The corpus differs between Python versions: `Corpus.description` says which
one a result came from (version, files, characters, a hash).
"""

import dataclasses
import hashlib
import pathlib
import platform
import sysconfig

import numpy as np

VOCAB = 128
TEST_FRACTION = 0.05


@dataclasses.dataclass(frozen=True)
class Corpus:
  """Windows of a character corpus: ``x`` the inputs, ``y`` the next
  characters, int32 arrays of ``(windows, context)``."""
  train: tuple[np.ndarray, np.ndarray]
  test: tuple[np.ndarray, np.ndarray]
  description: dict


def stdlib_text(max_chars: int | None = None) -> tuple[np.ndarray, dict]:
  """The standard library's top-level sources as ASCII codes (uint8)."""
  directory = pathlib.Path(sysconfig.get_paths()["stdlib"])
  files = sorted(directory.glob("*.py"))
  data = b"\n".join(path.read_bytes() for path in files)[:max_chars]
  codes = np.frombuffer(data, np.uint8).copy()
  codes[codes >= VOCAB] = 0
  return codes, {
      "source": "Python standard library, top-level *.py",
      "python": platform.python_version(), "files": len(files),
      "characters": int(codes.size),
      "sha256": hashlib.sha256(codes.tobytes()).hexdigest()[:16]}


def _windows(codes: np.ndarray, context: int) -> tuple[np.ndarray, ...]:
  count = (codes.size - 1) // context
  inputs = codes[:count * context].reshape(count, context)
  targets = codes[1:count * context + 1].reshape(count, context)
  return inputs.astype(np.int32), targets.astype(np.int32)


def load_corpus(context: int, max_chars: int | None = None,
                max_test_windows: int | None = None) -> Corpus:
  """The corpus in train and test windows of ``context`` characters."""
  codes, description = stdlib_text(max_chars)
  split = int(codes.size * (1 - TEST_FRACTION))
  train = _windows(codes[:split], context)
  test = tuple(a[:max_test_windows] for a in _windows(codes[split:],
                                                        context))
  return Corpus(train, test, {**description, "context": context,
                              "train_windows": int(train[0].shape[0]),
                              "test_windows": int(test[0].shape[0])})
