"""The wire codec: base64 ``.npy`` arrays nested in JSON dicts and lists.

Mirrors ``agilerl.arena.inference.serde`` on the server side, with two differences that
matter for a server: decoding never unpickles (``allow_pickle=False``) and every failure is a
:class:`RequestError` naming the field, so the handler answers 400 instead of 500.

Speed: numpy's own ``.npy`` reader parses the header text with a safe literal evaluator on
every call, which costs several times a small policy's forward pass. Requests to one agent
repeat the same few headers (same dtype and shape), so a header numpy has accepted once is
remembered by its exact bytes and later arrays with that header are read straight from the
buffer. A header never seen before always goes through ``np.load(allow_pickle=False)``, so
what is accepted and refused (and the error text) is exactly numpy's. Encoding caches the
header ``np.save`` would write for each (dtype, shape). Both caches are bounded and
thread-safe (dict reads and writes are atomic; a lost race only parses a header twice).
A header claiming more data than the request holds is refused before numpy would allocate
the claimed size.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import threading
import zipfile
from typing import Any

import numpy as np

from server_extension.serving.runtimes.base import RequestError

MAX_DEPTH = 8
_MAGIC = b"\x93NUMPY"
# Distinct headers remembered; a client varying its batch size uses one per size.
_CACHE_SIZE = 256
_DECODE_HEADERS: dict[bytes, tuple[np.dtype[Any], tuple[int, ...], bool]] = {}
_ENCODE_HEADERS: dict[tuple[np.dtype[Any], tuple[int, ...]], bytes] = {}
# numpy parses .npy headers with ast.literal_eval, and CPython 3.11's ast module is not safe
# across threads (gh-106905: a concurrent parse can raise "SystemError: AST constructor
# recursion depth mismatch", seen in the soak benchmark), which would turn a valid request
# into a 400. Parses happen only on header-cache misses, so one lock costs nothing steady.
_NUMPY_PARSE = threading.Lock()


def _header_end(raw: bytes) -> int:
    """Offset of the array data in a ``.npy`` buffer, or 0 if it does not look like one."""
    if raw[:6] != _MAGIC or len(raw) < 12:
        return 0
    major = raw[6]
    if major == 1:
        return 10 + int.from_bytes(raw[8:10], "little")
    if major in (2, 3):
        return 12 + int.from_bytes(raw[8:12], "little")
    return 0


def _read_header(raw: bytes) -> tuple[np.dtype[Any], tuple[int, ...], bool] | None:
    """(dtype, shape, fortran order) from a ``.npy`` header with numpy's own safe parser, or
    ``None`` where it cannot say (``np.load`` then gives the error)."""
    fp = io.BytesIO(raw)
    try:
        version = np.lib.format.read_magic(fp)
        with _NUMPY_PARSE:
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
            else:
                return None
    except Exception:  # noqa: BLE001 - numpy lets TypeError, TokenError... out on bad headers
        return None
    return dtype, tuple(shape), bool(fortran)


def _load(raw: bytes, what: str) -> np.ndarray:
    """``np.load(allow_pickle=False)`` with its failures turned into :class:`RequestError`."""
    try:
        with _NUMPY_PARSE:
            arr = np.load(io.BytesIO(raw), allow_pickle=False)
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise RequestError(f"{what} is not a .npy array: {exc}.") from exc
    except Exception as exc:
        # numpy says "Object arrays cannot be loaded when allow_pickle=False" for object dtype
        # (a ValueError); on hostile headers its parser also lets TypeError, TokenError and
        # others out. All of them mean the caller sent something that is not a plain .npy.
        raise RequestError(
            f"{what} could not be read as a .npy array ({exc}); send numeric arrays saved "
            "with allow_pickle=False."
        ) from exc
    if not isinstance(arr, np.ndarray):
        raise RequestError(f"{what} must be a single .npy array, not an .npz archive.")
    return arr


def decode_array(text: str, what: str) -> np.ndarray:
    """One base64 ``.npy`` string -> array, refusing pickled (object) arrays."""
    try:
        # strict_mode refuses what b64decode(validate=True) refuses (characters outside the
        # alphabet) and also misplaced padding; it skips b64decode's regex pass.
        raw = binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise RequestError(
            f"{what} is not valid base64; encode arrays with "
            "base64(np.save(buf, arr, allow_pickle=False))."
        ) from exc
    end = _header_end(raw)
    if not end:
        return _load(raw, what)  # not .npy at all: numpy's error (or the .npz refusal)
    header = raw[:end]
    known = _DECODE_HEADERS.get(header)
    if known is None:
        known = _read_header(header)
        if known is None or known[0].kind not in "biufc":
            # Object (pickled), structured, text...: numpy decides (and refuses pickles).
            return _load(raw, what)
        dtype, shape, _ = known
        need = math.prod(shape) * dtype.itemsize
        if need > len(raw) - end:
            # Checked before numpy reads: it would first allocate the size the header claims.
            raise RequestError(
                f"{what} is a truncated .npy array: its header says shape {shape} of {dtype} "
                f"({need} bytes) but {len(raw) - end} bytes follow."
            )
        arr = _load(raw, what)
        if arr.dtype == dtype and arr.shape == shape and len(raw) - end == arr.nbytes:
            if len(_DECODE_HEADERS) >= _CACHE_SIZE:
                _DECODE_HEADERS.clear()  # many distinct shapes: start over rather than grow
            _DECODE_HEADERS[header] = known
        return arr
    dtype, shape, fortran = known
    count = math.prod(shape)
    if len(raw) - end != count * dtype.itemsize:
        return _load(raw, what)  # short or padded data: numpy's answer and error text
    # A copy, like np.load gives: writable and not tied to the request's buffer.
    flat = np.frombuffer(raw, dtype=dtype, count=count, offset=end).copy()
    return flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)


def decode_tree(value: Any, what: str, depth: int = 0) -> Any:
    """Decode a JSON value holding arrays: strings become arrays, dicts and lists recurse."""
    if depth > MAX_DEPTH:
        raise RequestError(f"{what} is nested more than {MAX_DEPTH} levels deep.")
    if value is None:
        return None
    if isinstance(value, str):
        return decode_array(value, what)
    if isinstance(value, dict):
        return {str(k): decode_tree(v, f"{what}[{k!r}]", depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(decode_tree(v, f"{what}[{i}]", depth + 1) for i, v in enumerate(value))
    raise RequestError(
        f"{what} must be a base64 .npy string (or a dict/list of them), "
        f"got {type(value).__name__}."
    )


def _save_header(dtype: np.dtype[Any], shape: tuple[int, ...]) -> bytes:
    key = (dtype, shape)
    header = _ENCODE_HEADERS.get(key)
    if header is None:
        # Whatever np.save writes for an empty array of this dtype and shape, minus the data.
        buf = io.BytesIO()
        np.save(buf, np.empty(shape, dtype), allow_pickle=False)
        header = buf.getvalue()[: _header_end(buf.getvalue())]
        if len(_ENCODE_HEADERS) >= _CACHE_SIZE:
            _ENCODE_HEADERS.clear()
        _ENCODE_HEADERS[key] = header
    return header


def encode_array(arr: np.ndarray) -> str:
    """One array -> base64 ``.npy`` string (byte for byte what ``np.save`` would give)."""
    arr = np.ascontiguousarray(arr)
    if arr.dtype.hasobject or arr.dtype.names is not None:
        # np.save's own path (and its error for object arrays): never on the hot path.
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        return base64.b64encode(buf.getvalue()).decode("ascii")
    data = _save_header(arr.dtype, arr.shape) + arr.tobytes()
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def encode_tree(value: Any) -> Any:
    """Encode arrays (and numbers) nested in dicts, lists and tuples for JSON."""
    if value is None:
        return None
    if isinstance(value, dict):
        return {str(k): encode_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode_tree(v) for v in value]
    return encode_array(np.asarray(value))


def batch_size(tree: Any) -> int:
    """The leading-axis length of the first array in a decoded tree (1 for a scalar)."""
    while isinstance(tree, (dict, tuple)):
        if not tree:
            return 0
        tree = next(iter(tree.values())) if isinstance(tree, dict) else tree[0]
    return int(tree.shape[0]) if getattr(tree, "ndim", 0) else 1
