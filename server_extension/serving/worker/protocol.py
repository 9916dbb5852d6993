"""Frames between the server and a worker process: a JSON header and an optional raw body.

Layout of one frame: 4 bytes header length, 4 bytes body length (both big-endian), the header
as UTF-8 JSON, then the body bytes. Requests carry an ``id`` that the answers repeat, so many
calls can be in flight on one socket and answered in any order.

Only JSON and raw bytes cross the socket, never pickles: the worker runs a checkpoint's code,
and nothing it sends back may run code in the Jupyter server.
"""

from __future__ import annotations

import json
import struct
from typing import Any

PREFIX = struct.Struct(">II")
# Headers hold ids, names and short messages; arguments, results and arrays travel in the
# body, whose cap each side passes (the worker's frame cap, from max_array_mb).
MAX_HEADER = 4 * 1024 * 1024
MAX_BODY = 1024 * 1024 * 1024


def dump_json(value: Any) -> bytes:
    """``value`` as a UTF-8 JSON body (lone surrogates pass through, as JSON allows them)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode(
        "utf-8", "surrogatepass")


def load_json(body: bytes) -> Any:
    """The inverse of :func:`dump_json`."""
    return json.loads(body.decode("utf-8", "surrogatepass"))


class ProtocolError(RuntimeError):
    """The other side sent something that is not a frame: the connection cannot be trusted."""


def pack(header: dict[str, Any], body: bytes = b"") -> bytes:
    """One frame holding ``header`` and ``body``."""
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=True,
                     allow_nan=False).encode()
    return PREFIX.pack(len(raw), len(body)) + raw + body


def parse_prefix(prefix: bytes, max_body: int = MAX_BODY) -> tuple[int, int]:
    """(header length, body length) from a frame's first 8 bytes; refuses sizes past the caps
    (before a byte of the frame is buffered)."""
    header_len, body_len = PREFIX.unpack(prefix)
    if header_len > MAX_HEADER or body_len > max_body:
        raise ProtocolError(f"frame of {header_len} + {body_len} bytes is larger than allowed")
    return header_len, body_len


def parse_header(raw: bytes) -> dict[str, Any]:
    """The header object of a frame; :class:`ProtocolError` if it is not a JSON object."""
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"frame header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise ProtocolError("frame header is not a JSON object")
    return header
