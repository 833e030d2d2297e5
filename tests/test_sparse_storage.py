"""save_sparse / load_sparse: bit-exact round trips, real sizes, clear errors."""

import json
import struct
import zlib

import flax.linen as nn
import flax.serialization
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import optax_gsm

DTYPES = ["float32", "float16", "bfloat16", "float64", "int32", "uint8",
          "bool"]


def assert_bit_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape
    assert x.tobytes() == y.tobytes()


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(
    dtype=st.sampled_from(DTYPES),
    shape=st.sampled_from([(), (0,), (1,), (7,), (33, 5), (2, 3, 4, 5)]),
    density=st.sampled_from([0.0, 0.01, 0.2, 0.7, 1.0]),
    specials=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_round_trip_is_bit_exact(tmp_path_factory, dtype, shape, density,
                                 specials, seed):
  rng = np.random.default_rng(seed)
  dtype = jnp.dtype(dtype)
  values = rng.normal(size=shape) * 100
  if specials and jnp.issubdtype(dtype, jnp.floating):
    values = np.where(rng.uniform(size=shape) < 0.3,
                      rng.choice([-0.0, np.nan, np.inf, -np.inf, 1e-40],
                                 size=shape), values)
  keep = rng.uniform(size=shape) < density
  array = np.where(keep, values, 0).astype(dtype)
  if specials and dtype == np.float32 and array.size:
    # A NaN with a payload survives too.
    array.reshape(-1).view(np.uint32)[0] = 0x7FC00123
  tree = {"leaf": array, "nested": [array, (array,)], "none": None}
  path = tmp_path_factory.mktemp("rt") / "tree.gsm"
  optax_gsm.export.save_sparse(path, tree)
  assert_bit_equal(optax_gsm.export.load_sparse(path), tree)


def test_flax_linen_variables_and_nnx_state(tmp_path):
  class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      x = nn.BatchNorm(use_running_average=not train)(nn.Dense(16)(x))
      return nn.Dense(4)(x)

  variables = Net().init(jax.random.PRNGKey(0), jnp.ones((2, 8)))
  variables = jax.tree.map(np.asarray, variables)
  optax_gsm.export.save_sparse(tmp_path / "linen.gsm", variables)
  assert_bit_equal(optax_gsm.export.load_sparse(tmp_path / "linen.gsm"), variables)

  model = nnx.Linear(8, 4, rngs=nnx.Rngs(0))
  state = jax.tree.map(np.asarray, nnx.as_pure(nnx.state(model)))
  optax_gsm.export.save_sparse(tmp_path / "nnx.gsm", state)
  loaded = optax_gsm.export.load_sparse(tmp_path / "nnx.gsm")
  assert isinstance(loaded, nnx.State)
  assert_bit_equal(loaded, state)
  nnx.update(model, loaded)


class LeNet300100(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(300)(x))
    return nn.Dense(10)(nn.relu(nn.Dense(100)(x)))


@pytest.mark.slow
def test_pruned_lenet300_is_over_40x_smaller_than_its_msgpack(tmp_path):
  params = LeNet300100().init(jax.random.PRNGKey(0),
                              jnp.ones((1, 784)))["params"]
  pruned, _ = optax_gsm.prune(params, 60.0)
  dense_size = len(flax.serialization.msgpack_serialize(
      jax.tree.map(np.asarray, pruned)))
  sparse_size = optax_gsm.export.save_sparse(tmp_path / "p.gsm", pruned)
  # Measured: 50x (float32 values, relative offsets of 5-7 bits).
  assert dense_size / sparse_size > 40
  half = optax_gsm.export.save_sparse(tmp_path / "h.gsm", pruned,
                               values_dtype=jnp.float16)
  assert half < 0.7 * sparse_size
  lossy = optax_gsm.export.load_sparse(tmp_path / "h.gsm")
  for a, b in zip(jax.tree.leaves(lossy), jax.tree.leaves(pruned)):
    assert a.dtype == b.dtype
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
    np.testing.assert_array_equal(a != 0, b != 0)


def test_truncated_corrupt_and_foreign_files_are_clear_errors(tmp_path):
  tree = {"w": np.where(np.arange(1000) % 17 == 0, 1.5, 0.0)}
  path = tmp_path / "t.gsm"
  size = optax_gsm.export.save_sparse(path, tree)
  data = path.read_bytes()
  for cut in (size - 1, size // 2, 30):
    path.write_bytes(data[:cut])
    with pytest.raises(ValueError, match="truncated"):
      optax_gsm.export.load_sparse(path)
  corrupt = bytearray(data)
  corrupt[-10] ^= 0xFF
  path.write_bytes(bytes(corrupt))
  with pytest.raises(ValueError, match="corrupted"):
    optax_gsm.export.load_sparse(path)
  path.write_bytes(b"\x93NUMPY" + data)
  with pytest.raises(ValueError, match="not an optax_gsm sparse file"):
    optax_gsm.export.load_sparse(path)


def test_unsupported_input_is_a_clear_error(tmp_path):
  with pytest.raises(TypeError, match="save_sparse stores dicts"):
    optax_gsm.export.save_sparse(tmp_path / "x", {"w": object()})
  with pytest.raises(ValueError, match="`values_dtype` must be a float"):
    optax_gsm.export.save_sparse(tmp_path / "x", {"w": np.ones(3)},
                          values_dtype=jnp.int8)


def _with_header(data: bytes, edit) -> bytes:
  """``data`` with its JSON header changed by ``edit`` and the checksum
  made valid again: what a crafted file looks like."""
  magic_end = len(b"OPTAXGSM-SPARSE\n")
  (size,) = struct.unpack("<Q", data[magic_end:magic_end + 8])
  header = json.loads(data[magic_end + 8:magic_end + 8 + size])
  header = edit(header)
  deep = ('{"type":"list","items":[' * 5000 + '{"type":"leaf","index":0}'
          + "]}" * 5000)
  encoded = json.dumps(header).replace('"DEEP"', deep).encode()
  body = (data[:magic_end] + struct.pack("<Q", len(encoded)) + encoded
          + data[magic_end + 8 + size:-4])
  return body + struct.pack("<I", zlib.crc32(body))


def _sample_file(tmp_path) -> bytes:
  rng = np.random.default_rng(0)
  tree = {"dense": np.arange(6, dtype=np.float32).reshape(2, 3),
          "bitmap": np.where(rng.random(64) < 0.3, 1.0, 0.0).astype(
              np.float32),
          "offsets": np.where(np.arange(5000) % 997 == 3, 2.0,
                              0.0).astype(np.float32),
          "nested": [{"a": np.ones(2, np.int32)}, None]}
  path = tmp_path / "sample.gsm"
  optax_gsm.export.save_sparse(path, tree)
  return path.read_bytes()


def test_crafted_headers_with_a_valid_checksum_are_value_errors(tmp_path):
  # Regression: IndexError, RecursionError, MemoryError, or a shape [-1]
  # loading as (1,), or a few hundred bytes allocating gigabytes.
  data = _sample_file(tmp_path)
  path = tmp_path / "crafted.gsm"

  def set_field(index, key, value):
    def edit(header):
      header["leaves"][index][key] = value
      return header
    return edit

  def deep(header):  # nesting JSON itself cannot write back
    header["structure"] = "DEEP"
    return header

  edits = [set_field(i, key, value) for i in range(4)
           for key, value in [("shape", [-1]), ("shape", [10**9]),
                              ("shape", [2**40, 2**40]), ("shape", "x"),
                              ("dtype", "object"), ("dtype", "nonsense"),
                              ("encoding", "zip"), ("bits", 40),
                              ("codes", 10**9), ("nonzero", -3),
                              ("tail", 10**6), ("values_dtype", "str")]]
  edits += [deep,
            lambda h: {**h, "structure": {"type": "leaf", "index": 99}},
            lambda h: {**h, "structure": {"type": "dict", "items": [1]}}]
  (tmp_path / "original.gsm").write_bytes(data)
  original = optax_gsm.export.load_sparse(tmp_path / "original.gsm")
  for edit in edits:
    path.write_bytes(_with_header(data, edit))
    # A field the leaf's encoding does not read may change; anything else
    # is a ValueError, never another tree.
    try:
      loaded = optax_gsm.export.load_sparse(path)
    except ValueError:
      continue
    jax.tree.map(np.testing.assert_array_equal, loaded, original)


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(st.data())
def test_mutated_files_load_or_raise_value_error(tmp_path_factory, data):
  original = _sample_file(tmp_path_factory.mktemp("fuzz"))
  body = bytearray(original[:-4])
  for _ in range(data.draw(st.integers(1, 8))):
    body[data.draw(st.integers(0, len(body) - 1))] = data.draw(
        st.integers(0, 255))
  mutated = bytes(body) + struct.pack("<I", zlib.crc32(bytes(body)))
  path = tmp_path_factory.mktemp("fuzz") / "m.gsm"
  path.write_bytes(mutated)
  try:
    optax_gsm.export.load_sparse(path)
  except ValueError:
    pass
