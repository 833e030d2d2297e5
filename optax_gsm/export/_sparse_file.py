"""Compact files for pruned models: only the non-zeros and where they are.

After `prune` a model at 60x still stores every zero. `save_sparse` writes
each mostly-zero leaf as its non-zero values plus their positions, in
whichever of two index codes is smaller for that leaf:

- a bitmap, one bit per entry (best above ~1/8 density);
- relative offsets, as in Deep Compression (Han et al., ICLR 2016): the gap
  ``d`` of zeros before each value in ``b`` bits, ``b`` chosen per leaf;
  a gap of ``2**b - 1`` or more is written as escape codes ``2**b - 1``
  (skip that many entries, no value) followed by the remainder; the zeros
  after the last value are escapes too, plus a ``tail`` below ``2**b - 1``.

A leaf is stored dense when that is smaller. "Zero" is the all-zero bit
pattern (``+0.0``), so ``-0.0`` and NaN payloads are kept as values and the
round trip is bit-exact. Lossy value storage (``values_dtype``) is opt-in.

The file: magic, a JSON header (tree structure, per-leaf dtype, shape,
encoding, byte ranges), the blobs, and a CRC-32 of everything before it; a
file that was cut short or altered fails with a clear error, never loads as
a wrong tree. Every header field is validated before use and every array it
allocates is bounded by the bytes that encode it (a dense leaf by its bytes,
a bitmap by its bits, offsets by the entries their codes can span), so a
crafted file with a valid checksum is a ValueError too, never an allocation
the file does not pay for. Only the standard library and NumPy are used.
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
_VERSION = 2
_MAX_OFFSET_BITS = 16
_MAX_RANK = 64
_MAX_NESTING = 64


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


def _offset_codes(positions: np.ndarray, bits: int,
                  size: int) -> tuple[np.ndarray, int]:
  """Deep Compression's relative indices with escapes (module docstring),
  and the tail: the zeros after the last value the escapes leave."""
  escape = (1 << bits) - 1
  gaps = np.diff(positions, prepend=-1) - 1
  escapes = gaps // escape
  trailing = size - 1 - (int(positions[-1]) if positions.size else -1)
  codes = np.full(int(escapes.sum()) + gaps.size + trailing // escape, escape,
                  np.int64)
  # Each gap's own code comes after its escapes.
  ends = np.cumsum(escapes + 1) - 1
  codes[ends] = gaps - escapes * escape
  return codes, trailing % escape


def _positions_from_codes(codes: np.ndarray, bits: int) -> np.ndarray:
  escape = (1 << bits) - 1
  is_value = codes != escape
  # Every code advances by itself; a value also advances past its own entry.
  advance = np.cumsum(codes + is_value) - 1
  return advance[is_value]


def _best_offset_bits(positions: np.ndarray, size: int) -> tuple[int, int]:
  """(bits, number of codes) of the smallest relative-offset stream."""
  gaps = np.diff(positions, prepend=-1) - 1
  trailing = size - 1 - (int(positions[-1]) if positions.size else -1)
  best = None
  for bits in range(1, _MAX_OFFSET_BITS + 1):
    escape = (1 << bits) - 1
    count = gaps.size + int((gaps // escape).sum()) + trailing // escape
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
  bits, count = _best_offset_bits(positions, array.size)
  offsets_size = -(-count * bits // 8)
  sparse_size = len(values_blob) + min(len(bitmap), offsets_size)
  if sparse_size >= len(dense[0]):
    return {"dtype": entry["dtype"], "shape": entry["shape"],
            "encoding": "dense"}, dense
  entry["nonzero"] = int(positions.size)
  if len(bitmap) <= offsets_size:
    return {**entry, "encoding": "bitmap"}, [values_blob, bitmap]
  codes, tail = _offset_codes(positions, bits, array.size)
  return ({**entry, "encoding": "offsets", "bits": bits, "codes": count,
           "tail": tail}, [values_blob, _pack_codes(codes, bits)])


class _CorruptFileError(ValueError):
  """A header field that is not what `save_sparse` writes."""


def _int(entry: dict, key: str, low: int, high: int | None = None) -> int:
  value = entry.get(key)
  if type(value) is not int or value < low or (
      high is not None and value > high):
    raise _CorruptFileError(f"leaf field {key!r} is {value!r}")
  return value


def _dtype(name: Any) -> np.dtype:
  try:
    dtype = jnp.dtype(name) if isinstance(name, str) else None
  except TypeError:
    dtype = None
  if dtype is None or not (dtype == np.bool_ or jnp.issubdtype(dtype,
                                                               jnp.number)):
    raise _CorruptFileError(f"leaf dtype {name!r}")
  return dtype


def _shape(value: Any) -> tuple[int, ...]:
  if not isinstance(value, list) or len(value) > _MAX_RANK or not all(
      type(d) is int and d >= 0 for d in value):
    raise _CorruptFileError(f"leaf shape {value!r}")
  return tuple(value)


def _decode_leaf(entry: Any, blobs: list[bytes]) -> np.ndarray:
  """One leaf, every field checked and every allocation bounded by the
  blobs' bytes before it is made."""
  if not isinstance(entry, dict):
    raise _CorruptFileError("a leaf entry is not an object")
  dtype, shape = _dtype(entry.get("dtype")), _shape(entry.get("shape"))
  size = int(np.prod(shape, dtype=object))  # Python ints: no overflow
  encoding = entry.get("encoding")
  if encoding == "dense":
    if len(blobs) != 1 or len(blobs[0]) != size * dtype.itemsize:
      raise _CorruptFileError("dense leaf size")
    return np.frombuffer(blobs[0], dtype).reshape(shape).copy()
  if encoding not in ("bitmap", "offsets") or len(blobs) != 2:
    raise _CorruptFileError(f"leaf encoding {encoding!r}")
  values_dtype = _dtype(entry.get("values_dtype", entry.get("dtype")))
  nonzero = _int(entry, "nonzero", 0)
  if len(blobs[0]) != nonzero * values_dtype.itemsize:
    raise _CorruptFileError("sparse leaf values")
  values = np.frombuffer(blobs[0], values_dtype)
  if encoding == "bitmap":
    if len(blobs[1]) != -(-size // 8):
      raise _CorruptFileError("bitmap length")
    positions = np.flatnonzero(np.unpackbits(
        np.frombuffer(blobs[1], np.uint8))[:size])
  else:
    bits = _int(entry, "bits", 1, _MAX_OFFSET_BITS)
    codes = _int(entry, "codes", 0)
    tail = _int(entry, "tail", 0, (1 << bits) - 2)
    if len(blobs[1]) != -(-codes * bits // 8):
      raise _CorruptFileError("offset codes length")
    decoded = _unpack_codes(blobs[1], bits, codes)
    # The codes and the tail span exactly the leaf: this bounds its size by
    # the bytes of the codes.
    is_value = decoded != (1 << bits) - 1
    if int(decoded.sum()) + int(is_value.sum()) + tail != size:
      raise _CorruptFileError("offset codes do not span the leaf")
    positions = _positions_from_codes(decoded, bits)
  if values.size != nonzero or positions.size != nonzero:
    raise _CorruptFileError("sparse leaf does not match its header")
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


def _rebuild(spec: Any, leaves: list, depth: int = 0) -> Any:
  if not isinstance(spec, dict) or depth > _MAX_NESTING:
    raise _CorruptFileError("tree structure")
  kind = spec.get("type")
  if kind == "leaf":
    index = spec.get("index")
    if type(index) is not int or not 0 <= index < len(leaves):
      raise _CorruptFileError(f"leaf index {index!r}")
    return leaves[index]
  if kind == "none":
    return None
  items = spec.get("items")
  if kind in ("list", "tuple"):
    if not isinstance(items, list):
      raise _CorruptFileError("tree structure")
    items = [_rebuild(x, leaves, depth + 1) for x in items]
    return items if kind == "list" else tuple(items)
  if not isinstance(items, dict):
    raise _CorruptFileError("tree structure")
  items = {k: _rebuild(v, leaves, depth + 1) for k, v in items.items()}
  if kind == "frozendict":
    from flax.core import FrozenDict  # only files written from Flax need it
    return FrozenDict(items)
  if kind == "nnx.State":
    from flax import nnx
    return nnx.State(items)
  if kind == "dict":
    return items
  raise _CorruptFileError(f"node type {kind!r}")


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
    sizes = [entry["blobs"] for entry in header["leaves"]]
    if not all(isinstance(s, list) and all(type(b) is int and b >= 0
                                           for b in s) for s in sizes):
      raise TypeError("blob sizes")
    expected = start + header_size + sum(sum(s) for s in sizes)
  except (ValueError, KeyError, TypeError, RecursionError) as error:
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
  try:
    for entry, entry_sizes in zip(header["leaves"], sizes):
      blobs = []
      for size in entry_sizes:
        blobs.append(body[offset:offset + size])
        offset += size
      leaves.append(_decode_leaf(entry, blobs))
    return _rebuild(header.get("structure"), leaves)
  except _CorruptFileError as error:
    raise ValueError(f"{os.fspath(path)!r} is corrupted: {error}.") from None
