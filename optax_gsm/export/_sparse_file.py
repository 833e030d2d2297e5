"""Compact files for pruned models: only the non-zeros and where they are.

After `prune` a model at 60x still stores every zero. `save_sparse` writes
each mostly-zero leaf as its non-zero values plus their positions, in
whichever of two index codes is smaller for that leaf:

- a bitmap, one bit per entry (best above ~1/8 density);
- relative offsets, as in Deep Compression (Han et al., ICLR 2016): the gap
  ``d`` of zeros before each value in ``b`` bits, ``b`` chosen per leaf;
  a gap of ``2**b - 1`` or more is written as escape codes ``2**b - 1``
  (skip that many entries, no value) followed by the remainder.

A leaf is stored dense when that is smaller. "Zero" is the all-zero bit
pattern (``+0.0``), so ``-0.0`` and NaN payloads are kept as values and the
round trip is bit-exact. Lossy value storage (``values_dtype``) is opt-in.

The file: magic, a JSON header (tree structure, per-leaf dtype, shape,
encoding, byte ranges), the blobs, and a CRC-32 of everything before it; a
file that was cut short or altered fails with a clear error, never loads as
a wrong tree. Only the standard library and NumPy are used.
"""

import json
import os
import struct
import zlib
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

_MAGIC = b"OPTAXGSM-SPARSE\n"
_VERSION = 1
_MAX_OFFSET_BITS = 16


def _unsigned_view(array: np.ndarray) -> np.ndarray:
  """The entries' bit patterns as unsigned ints (bools and bytes as uint8)."""
  width = array.dtype.itemsize
  return np.ascontiguousarray(array).reshape(-1).view(f"u{width}") if (
      width in (1, 2, 4, 8)) else None


def _pack_codes(codes: np.ndarray, bits: int) -> bytes:
  """``codes`` (each < 2**bits) as a big-endian bit stream."""
  shifts = np.arange(bits - 1, -1, -1, dtype=np.uint32)
  bit_matrix = (codes.astype(np.uint32)[:, None] >> shifts) & 1
  return np.packbits(bit_matrix.astype(np.uint8).reshape(-1)).tobytes()


def _unpack_codes(data: bytes, bits: int, count: int) -> np.ndarray:
  stream = np.unpackbits(np.frombuffer(data, np.uint8))[:count * bits]
  if stream.size != count * bits:
    raise ValueError("index stream shorter than its header says")
  weights = (1 << np.arange(bits - 1, -1, -1, dtype=np.int64))
  return stream.reshape(count, bits).astype(np.int64) @ weights


def _offset_codes(positions: np.ndarray, bits: int) -> np.ndarray:
  """Deep Compression's relative indices with escapes (module docstring)."""
  escape = (1 << bits) - 1
  gaps = np.diff(positions, prepend=-1) - 1
  escapes = gaps // escape
  codes = np.full(int(escapes.sum()) + gaps.size, escape, np.int64)
  # Each gap's own code comes after its escapes.
  ends = np.cumsum(escapes + 1) - 1
  codes[ends] = gaps - escapes * escape
  return codes


def _positions_from_codes(codes: np.ndarray, bits: int) -> np.ndarray:
  escape = (1 << bits) - 1
  is_value = codes != escape
  # Every code advances by itself; a value also advances past its own entry.
  advance = np.cumsum(codes + is_value) - 1
  return advance[is_value]


def _best_offset_bits(positions: np.ndarray) -> tuple[int, int]:
  """(bits, number of codes) of the smallest relative-offset stream."""
  gaps = np.diff(positions, prepend=-1) - 1
  best = None
  for bits in range(1, _MAX_OFFSET_BITS + 1):
    count = gaps.size + int((gaps // ((1 << bits) - 1)).sum())
    size = -(-count * bits // 8)
    if best is None or size < best[0]:
      best = (size, bits, count)
  return best[1], best[2]


def _encode_leaf(array: np.ndarray, values_dtype: Any) -> tuple[dict, list]:
  """(header entry, blobs) of one leaf, in the smallest encoding."""
  entry = {"dtype": array.dtype.name, "shape": list(array.shape)}
  dense = [np.ascontiguousarray(array).tobytes()]
  bits_view = _unsigned_view(array)
  if bits_view is None or array.size == 0:
    return {**entry, "encoding": "dense"}, dense
  positions = np.flatnonzero(bits_view)
  values = np.ascontiguousarray(array).reshape(-1)[positions]
  if values_dtype is not None and jnp.issubdtype(array.dtype, jnp.floating):
    values = values.astype(values_dtype)
    entry["values_dtype"] = jnp.dtype(values_dtype).name
  values_blob = values.tobytes()
  bitmap = np.packbits(bits_view != 0).tobytes()
  bits, count = _best_offset_bits(positions)
  offsets_size = -(-count * bits // 8)
  sparse_size = len(values_blob) + min(len(bitmap), offsets_size)
  if sparse_size >= len(dense[0]):
    return {"dtype": entry["dtype"], "shape": entry["shape"],
            "encoding": "dense"}, dense
  entry["nonzero"] = int(positions.size)
  if len(bitmap) <= offsets_size:
    return {**entry, "encoding": "bitmap"}, [values_blob, bitmap]
  return ({**entry, "encoding": "offsets", "bits": bits, "codes": count},
          [values_blob, _pack_codes(_offset_codes(positions, bits), bits)])


def _decode_leaf(entry: dict, blobs: list[bytes]) -> np.ndarray:
  dtype = jnp.dtype(entry["dtype"])
  shape = tuple(entry["shape"])
  size = int(np.prod(shape, dtype=np.int64))
  if entry["encoding"] == "dense":
    return np.frombuffer(blobs[0], dtype).reshape(shape).copy()
  values = np.frombuffer(blobs[0], jnp.dtype(entry.get("values_dtype",
                                                       entry["dtype"])))
  if entry["encoding"] == "bitmap":
    positions = np.flatnonzero(np.unpackbits(
        np.frombuffer(blobs[1], np.uint8))[:size])
  else:
    positions = _positions_from_codes(
        _unpack_codes(blobs[1], entry["bits"], entry["codes"]), entry["bits"])
  if values.size != entry["nonzero"] or positions.size != entry["nonzero"] or (
      positions.size and positions[-1] >= size):
    raise ValueError("sparse leaf does not match its header")
  flat = np.zeros(size, dtype)
  flat[positions] = values.astype(dtype)
  return flat.reshape(shape)


# Tree structure as JSON: the containers Flax and Optax users store.
def _structure(node: Any, leaves: list) -> Any:
  if isinstance(node, dict) or _is_mapping_node(node):
    keys = list(node.keys())
    if not all(isinstance(k, str) for k in keys):
      raise TypeError(f"save_sparse stores dicts with str keys; got {keys!r}.")
    return {"type": _mapping_type(node),
            "items": {k: _structure(node[k], leaves) for k in keys}}
  if isinstance(node, (list, tuple)) and not hasattr(node, "_fields"):
    return {"type": type(node).__name__,
            "items": [_structure(x, leaves) for x in node]}
  if node is None:
    return {"type": "none"}
  if isinstance(node, (np.ndarray, jax.Array, np.generic, int, float, bool)):
    leaves.append(np.asarray(node))
    return {"type": "leaf", "index": len(leaves) - 1}
  raise TypeError(
      f"save_sparse stores dicts, lists, tuples, Flax FrozenDicts and NNX "
      f"States of arrays; got a {type(node).__name__}. Convert it first, e.g. "
      "with flax.serialization.to_state_dict or nnx.as_pure.")


def _is_mapping_node(node: Any) -> bool:
  return type(node).__name__ in ("FrozenDict", "State") and hasattr(
      node, "keys")


def _mapping_type(node: Any) -> str:
  return {"FrozenDict": "frozendict", "State": "nnx.State"}.get(
      type(node).__name__, "dict")


def _rebuild(spec: dict, leaves: list) -> Any:
  kind = spec["type"]
  if kind == "leaf":
    return leaves[spec["index"]]
  if kind == "none":
    return None
  if kind in ("list", "tuple"):
    items = [_rebuild(x, leaves) for x in spec["items"]]
    return items if kind == "list" else tuple(items)
  items = {k: _rebuild(v, leaves) for k, v in spec["items"].items()}
  if kind == "frozendict":
    from flax.core import FrozenDict  # only files written from Flax need it
    return FrozenDict(items)
  if kind == "nnx.State":
    from flax import nnx
    return nnx.State(items)
  if kind == "dict":
    return items
  raise ValueError(f"unknown node type {kind!r} in the file")


def _encode_tree(tree: chex.ArrayTree, values_dtype: Any) -> tuple[dict, list]:
  leaves: list = []
  structure = _structure(tree, leaves)
  entries, blobs = [], []
  for leaf in leaves:
    entry, leaf_blobs = _encode_leaf(leaf, values_dtype)
    entry["blobs"] = [len(b) for b in leaf_blobs]
    entries.append(entry)
    blobs.extend(leaf_blobs)
  return {"version": _VERSION, "structure": structure, "leaves": entries}, blobs


def stored_leaf_bytes(array: Any, values_dtype: Any = None) -> int:
  """Bytes `save_sparse` spends on one leaf's data (header excluded)."""
  entry, blobs = _encode_leaf(np.asarray(array), values_dtype)
  del entry
  return sum(len(b) for b in blobs)


def save_sparse(path: str | os.PathLike, tree: chex.ArrayTree, *,
                values_dtype: Any = None) -> int:
  """Writes ``tree`` with every mostly-zero leaf stored sparse.

  Args:
    path: the file to write.
    tree: a pytree of arrays made of dicts, lists, tuples, ``None``, Flax
      ``FrozenDict`` or NNX ``State`` (pure: ``nnx.as_pure``): params, batch
      statistics, a whole variables dict.
    values_dtype: None (default: values as they are, bit-exact), or a
      smaller float dtype (``jnp.float16``, ``jnp.bfloat16``) for the
      non-zero values of floating-point sparse leaves: lossy.

  Returns:
    The number of bytes written.
  """
  if values_dtype is not None and not jnp.issubdtype(jnp.dtype(values_dtype),
                                                     jnp.floating):
    raise ValueError(f"`values_dtype` must be a float dtype such as "
                     f"jnp.float16 or jnp.bfloat16; got {values_dtype!r}.")
  header, blobs = _encode_tree(tree, values_dtype)
  header_bytes = json.dumps(header, separators=(",", ":")).encode()
  body = (_MAGIC + struct.pack("<Q", len(header_bytes)) + header_bytes
          + b"".join(blobs))
  data = body + struct.pack("<I", zlib.crc32(body))
  with open(path, "wb") as f:
    f.write(data)
  return len(data)


def load_sparse(path: str | os.PathLike) -> chex.ArrayTree:
  """Reads a file written by `save_sparse`: the same tree, as NumPy arrays.

  Raises:
    ValueError: not such a file, or truncated or corrupted (checksum).
  """
  with open(path, "rb") as f:
    data = f.read()
  if not data.startswith(_MAGIC):
    raise ValueError(f"{os.fspath(path)!r} is not an optax_gsm sparse file.")
  if len(data) < len(_MAGIC) + 12:
    raise ValueError(f"{os.fspath(path)!r} is truncated.")
  body, (checksum,) = data[:-4], struct.unpack("<I", data[-4:])
  (header_size,) = struct.unpack("<Q", body[len(_MAGIC):len(_MAGIC) + 8])
  start = len(_MAGIC) + 8
  try:
    header = json.loads(body[start:start + header_size])
    expected = start + header_size + sum(
        size for entry in header["leaves"] for size in entry["blobs"])
  except (ValueError, KeyError, TypeError) as error:
    raise ValueError(f"{os.fspath(path)!r} is truncated or corrupted: its "
                     "header does not parse.") from error
  if len(body) != expected:
    raise ValueError(f"{os.fspath(path)!r} is truncated or has extra bytes: "
                     f"{len(body) + 4} bytes, the header says {expected + 4}.")
  if zlib.crc32(body) != checksum:
    raise ValueError(f"{os.fspath(path)!r} is corrupted: checksum mismatch.")
  if header.get("version") != _VERSION:
    raise ValueError(f"{os.fspath(path)!r} has format version "
                     f"{header.get('version')!r}; this reads {_VERSION}.")
  offset = start + header_size
  leaves = []
  for entry in header["leaves"]:
    blobs = []
    for size in entry["blobs"]:
      blobs.append(body[offset:offset + size])
      offset += size
    leaves.append(_decode_leaf(entry, blobs))
  return _rebuild(header["structure"], leaves)
