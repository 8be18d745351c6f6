"""`tensorizer._syscalls`: `fallocate(2)`, as the library wraps it (used
to preallocate files before writing them out of order)."""

import ctypes
import ctypes.util
import errno
import os

__all__ = ("has_fallocate", "try_fallocate")


def _load_fallocate():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fallocate = libc.fallocate64
    except (OSError, AttributeError):
        return None
    fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    fallocate.restype = ctypes.c_int
    return fallocate


_fallocate = _load_fallocate()


def has_fallocate() -> bool:
    """Whether `fallocate(2)` is available."""
    return _fallocate is not None


def try_fallocate(fd: int, offset: int, length: int, suppress_all_errors: bool = False) -> bool:
    """Allocates `length` bytes at `offset` of `fd`; True on success. An
    unsupported file system answers False; other errors raise OSError
    unless `suppress_all_errors`."""
    if _fallocate is None:
        return False
    if _fallocate(fd, 0, offset, length) == 0:
        return True
    err = ctypes.get_errno()
    if suppress_all_errors or err == errno.EOPNOTSUPP:
        return False
    raise OSError(err, os.strerror(err))
