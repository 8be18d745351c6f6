"""FileStreamer: byte ranges of files on any store, read by the Rust core
(several ranges at once, each range one request or `pread`)."""

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, List, Optional

from ..libstreamer.libstreamer import runai_end, runai_list_files, runai_set_credentials, runai_start  # noqa: F401
from ..s3_utils.s3_utils import S3Credentials, storage


def concurrency() -> int:
    """RUNAI_STREAMER_CONCURRENCY, else 16 (Run:ai's default)."""
    value = os.environ.get("RUNAI_STREAMER_CONCURRENCY")
    try:
        return max(1, int(value)) if value else 16
    except ValueError:
        raise ValueError(f"RUNAI_STREAMER_CONCURRENCY must be an integer, not {value!r}")


def memory_limit() -> Optional[int]:
    """RUNAI_STREAMER_MEMORY_LIMIT in bytes; None when unset or -1
    (unlimited). 0 means one tensor at a time."""
    value = os.environ.get("RUNAI_STREAMER_MEMORY_LIMIT")
    if value is None or value.strip() in ("", "-1"):
        return None
    try:
        limit = int(value)
    except ValueError:
        raise ValueError(f"RUNAI_STREAMER_MEMORY_LIMIT must be an integer, not {value!r}")
    if limit < -1:
        raise ValueError(f"RUNAI_STREAMER_MEMORY_LIMIT must be -1 or more, not {limit}")
    return limit


class FileStreamer:
    """Reads the ranges of `FileChunks` requests; `get_chunks` yields
    `(file id, range index, uint8 tensor)` in request order."""

    def __init__(self) -> None:
        self.streamer = None
        self._requests: List = []
        self._credentials: Optional[S3Credentials] = None
        self._device = "cpu"
        self._sources = {}

    def __enter__(self) -> "FileStreamer":
        self.streamer = runai_start()
        return self

    def __exit__(self, exc_type, exc_value, traceback) -> None:
        self._requests = []
        self._sources.clear()
        if self.streamer is not None:
            runai_end(self.streamer)
            self.streamer = None

    def list_files(self, prefix: str, is_recursive: bool = True,
                   allow_patterns: Optional[List[str]] = None,
                   ignore_patterns: Optional[List[str]] = None) -> List:
        """`(path, size)` of the files under `prefix` (see
        `libstreamer.runai_list_files`)."""
        owns_streamer = self.streamer is None
        streamer = runai_start() if owns_streamer else self.streamer
        results = []
        try:
            runai_list_files(streamer, prefix, lambda path, size: results.append((path, size)),
                             is_recursive=is_recursive, allow_patterns=allow_patterns,
                             ignore_patterns=ignore_patterns)
        finally:
            if owns_streamer:
                runai_end(streamer)
        return results

    def _source(self, path: str):
        from tensorizer_rs import _native
        if path not in self._sources:
            self._sources[path] = _native.Source(path, storage=storage(self._credentials))
        return self._sources[path]

    def stream_files(self, file_stream_requests, credentials: Optional[S3Credentials] = None,
                     device: Optional[str] = "cpu", is_distributed: bool = False,
                     owned: bool = True) -> None:
        if is_distributed:
            raise NotImplementedError(
                "tensorizer_rs's runai_model_streamer does not stream distributed yet "
                "(is_distributed=True): pass is_distributed=False, and each rank reads the "
                "files itself")
        self._requests = list(file_stream_requests)
        self._credentials = credentials
        self._device = device or "cpu"

    def get_chunks(self) -> Iterator:
        import torch
        requests, self._requests = self._requests, []
        jobs = [(r, k) for r in requests for k in range(len(r.sizes))]

        def read(job):
            r, k = job
            data = self._source(r.path).read(r.offsets[k], r.sizes[k])
            if len(data) != r.sizes[k]:
                raise ValueError(
                    f"{r.path} is truncated: {r.sizes[k]} bytes at {r.offsets[k]} asked for, "
                    f"{len(data)} there")
            return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else \
                torch.empty(0, dtype=torch.uint8)

        with ThreadPoolExecutor(max_workers=min(concurrency(), 16)) as pool:
            for (r, k), tensor in zip(jobs, pool.map(read, jobs)):
                if self._device != "cpu":
                    tensor = tensor.to(self._device)
                yield r.id, k, tensor
