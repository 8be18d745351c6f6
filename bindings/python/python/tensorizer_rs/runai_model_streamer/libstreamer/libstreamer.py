"""The names Run:ai's Python layer calls its C library by, answered by the
Rust core where they have a meaning here: a streamer handle, credentials
on it, and listing files (local directories and object stores)."""

import fnmatch
import os
from typing import Callable, List, Optional

from ..s3_utils.s3_utils import is_object_storage_path, storage


class _Streamer:
    """A handle: what Run:ai's C library keeps per streamer (here, only
    the credentials its listings use)."""

    def __init__(self):
        self.credentials = None


def runai_start():
    return _Streamer()


def runai_end(streamer) -> None:
    streamer.credentials = None


def runai_set_credentials(streamer, credentials) -> None:
    streamer.credentials = credentials


def runai_list_files(streamer, prefix: str, callback: Callable[[str, int], None],
                     is_recursive: bool = True, allow_patterns: Optional[List[str]] = None,
                     ignore_patterns: Optional[List[str]] = None) -> None:
    """Calls `callback(path, size)` for each file under `prefix` (every
    level below with `is_recursive`) whose name relative to it matches
    `allow_patterns` (all when None) and no `ignore_patterns`. Paths are
    `prefix` joined with the name. A missing local directory raises
    ValueError."""
    from tensorizer_rs import _native
    if is_object_storage_path(prefix):
        base = prefix.rstrip("/")
        listed = _native.list_objects(base + "/", recursive=is_recursive,
                                      storage=storage(getattr(streamer, "credentials", None)))
        join = lambda name: f"{base}/{name}"  # noqa: E731
    else:
        if not os.path.isdir(prefix):
            raise ValueError(f"{prefix!r} is not a directory")
        listed = _native.list_objects(prefix, recursive=is_recursive)
        join = lambda name: os.path.join(prefix, name)  # noqa: E731
    for name, size in listed:
        if allow_patterns and not any(fnmatch.fnmatch(name, p) for p in allow_patterns):
            continue
        if ignore_patterns and any(fnmatch.fnmatch(name, p) for p in ignore_patterns):
            continue
        callback(join(name), size)
