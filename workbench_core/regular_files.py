"""Reading workspace files that anyone with write access to the workspace may have replaced.

A FIFO named ``experiment.json`` blocks a reader until someone writes to it; a symlink to
``/dev/zero`` named ``metrics.csv`` reads without end and reports size 0, so size checks made
with ``stat`` before opening do not help. Every workspace read goes through :func:`read_capped`
or :func:`open_text`: the file is opened without blocking (``O_NONBLOCK``), its *opened*
descriptor is checked to be a regular file (``fstat``), and at most ``cap`` bytes are read.

Example::

    raw = read_capped(folder / "experiment.json", 1024 * 1024)
"""

from __future__ import annotations

import errno
import io
import os
import stat
from pathlib import Path


class NotARegularFile(OSError):
    """The path names a FIFO, device, socket or folder (or a link where none may be)."""


class TooLarge(OSError):
    """The file holds more than the reader allows."""


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "not a regular file"


def open_regular(path: Path | str, *, follow_links: bool = True) -> int:
    """A read-only descriptor on ``path``, which must be a regular file.

    :class:`NotARegularFile` for anything else (and for a symlink when ``follow_links`` is
    false); other :class:`OSError`\\ s as ``os.open`` raises them. The descriptor is blocking
    again once checked.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_links else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if not follow_links and exc.errno == errno.ELOOP:  # the last component is a link
            raise NotARegularFile(f"{path} is a symbolic link, which is not followed here") \
                from exc
        if exc.errno == errno.ENXIO:  # a socket, or a device with nothing behind it
            raise NotARegularFile(f"{path} is a socket or device, not a regular file") \
                from exc
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotARegularFile(f"{path} is {_kind(mode)}, not a regular file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_capped(path: Path | str, cap: int, *, follow_links: bool = True) -> bytes:
    """The bytes of regular file ``path``; :class:`TooLarge` past ``cap`` bytes."""
    fd = open_regular(path, follow_links=follow_links)
    with os.fdopen(fd, "rb") as fh:
        raw = fh.read(cap + 1)
    if len(raw) > cap:
        raise TooLarge(f"{path} is over {_size(cap)}")
    return raw


def open_text(path: Path | str, cap: int, *, follow_links: bool = True) -> io.StringIO:
    """Regular file ``path`` as UTF-8 text (for ``csv``); :class:`TooLarge` past ``cap``.

    ``UnicodeDecodeError`` when it is not UTF-8.
    """
    raw = read_capped(path, cap, follow_links=follow_links)
    return io.StringIO(raw.decode("utf-8"), newline="")


def _size(cap: int) -> str:
    if cap >= 1024 * 1024:
        return f"{cap / 2**20:g} MiB"
    return f"{cap / 1024:g} KiB"
