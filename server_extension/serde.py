"""The wire codec: base64 ``.npy`` arrays nested in JSON dicts and lists.

Mirrors ``agilerl.arena.inference.serde`` on the server side, with two differences that
matter for a server: decoding never unpickles (``allow_pickle=False``) and every failure is a
:class:`RequestError` naming the field, so the handler answers 400 instead of 500.
"""

from __future__ import annotations

import base64
import binascii
import io
import zipfile
from typing import Any

import numpy as np

from .runtimes.base import RequestError

MAX_DEPTH = 8


def decode_array(text: str, what: str) -> np.ndarray:
    """One base64 ``.npy`` string -> array, refusing pickled (object) arrays."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestError(
            f"{what} is not valid base64; encode arrays with "
            "base64(np.save(buf, arr, allow_pickle=False))."
        ) from exc
    try:
        arr = np.load(io.BytesIO(raw), allow_pickle=False)
    except ValueError as exc:
        # numpy says "Object arrays cannot be loaded when allow_pickle=False" for object dtype.
        raise RequestError(
            f"{what} could not be read as a .npy array ({exc}); send numeric arrays saved "
            "with allow_pickle=False."
        ) from exc
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise RequestError(f"{what} is not a .npy array: {exc}.") from exc
    if not isinstance(arr, np.ndarray):
        raise RequestError(f"{what} must be a single .npy array, not an .npz archive.")
    return arr


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


def encode_array(arr: np.ndarray) -> str:
    """One array -> base64 ``.npy`` string."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")


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
        tree = next(iter(tree.values())) if isinstance(tree, dict) else tree[0]
    return int(tree.shape[0]) if getattr(tree, "ndim", 0) else 1
