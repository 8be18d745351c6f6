"""SafetensorsStreamer, list_safetensors, pull_files and
ObjectStorageModel, as runai-model-streamer 0.17 defines them, over the
Rust core: each file is opened once (its header read and checked), its
tensors read in parallel ranged reads into 64-byte aligned memory, a
window at a time within RUNAI_STREAMER_MEMORY_LIMIT, the next window read
while the caller consumes this one."""

from __future__ import annotations

import fcntl
import glob
import logging
import os
import shutil
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from timeit import default_timer as timer
from typing import Collection, Iterator, List, Optional

import torch

from ..distributed_streamer.distributed_streamer import (
    DistributedStreamer,
    get_dist_buffer_alignment,
)
from ..file_streamer.file_streamer import memory_limit
from ..s3_utils.s3_utils import (
    S3Credentials,
    azure_glob,
    azure_pull_files,
    gcs_glob,
    gcs_pull_files,
    is_azure_path,
    is_gs_path,
    is_s3_path,
    s3_glob,
    s3_pull_files,
)
from . import safetensors_pytorch

logger = logging.getLogger(__name__)

SAFETENSORS_PATTERN = "*.safetensors"

# Bytes held in one window when no memory limit is set: the next window
# is read while this one is consumed.
DEFAULT_WINDOW = 1 << 30


def list_safetensors(path: str, s3_credentials: Optional[S3Credentials] = None) -> List[str]:
    """The safetensors files directly in `path` (not recursive)."""
    if is_s3_path(path):
        return s3_glob(path, [SAFETENSORS_PATTERN], s3_credentials)
    if is_gs_path(path):
        return gcs_glob(path, [SAFETENSORS_PATTERN])
    if is_azure_path(path):
        return azure_glob(path, [SAFETENSORS_PATTERN])
    return glob.glob(os.path.join(path, SAFETENSORS_PATTERN))


def pull_files(model_path: str, dst: str, allow_pattern: Optional[List[str]] = None,
               ignore_pattern: Optional[List[str]] = None,
               s3_credentials: Optional[S3Credentials] = None) -> None:
    """Downloads the objects under `model_path` (recursively) into `dst`."""
    if is_s3_path(model_path):
        return s3_pull_files(model_path, dst, allow_pattern, ignore_pattern, s3_credentials)
    if is_gs_path(model_path):
        return gcs_pull_files(model_path, dst, allow_pattern, ignore_pattern)
    if is_azure_path(model_path):
        return azure_pull_files(model_path, dst, allow_pattern, ignore_pattern)
    raise NotImplementedError("pull files is not implemented for file system paths")


class ObjectStorageModel:
    """Downloads a model from object storage once per `dst`, whatever the
    number of processes asking: the first takes an exclusive lock
    (`dst + ".lock"`, fcntl.flock, one machine) and downloads, the others
    wait and find the sentinel `.runai_complete`, written only after a
    download that raised nothing."""

    SENTINEL_NAME = ".runai_complete"

    def __init__(self, model_path: str, dst: str,
                 s3_credentials: Optional[S3Credentials] = None) -> None:
        if not (is_s3_path(model_path) or is_gs_path(model_path) or is_azure_path(model_path)):
            raise ValueError(
                f"model_path {model_path!r} is not a supported object storage path "
                "(expected s3://, gs://, or az://)")
        self.dir = dst.rstrip("/") or "/"
        self._model_path = model_path if model_path.endswith("/") else model_path + "/"
        self._s3_credentials = s3_credentials
        self._lock_path = self.dir + ".lock"
        self._sentinel = os.path.join(self.dir, self.SENTINEL_NAME)
        self._lock_file = open(self._lock_path, "a")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_SH)
            if os.path.exists(self._sentinel):
                self._skip = True
            else:
                # SH -> EX directly can deadlock two upgraders: release first,
                # then look again once exclusive.
                fcntl.flock(self._lock_file, fcntl.LOCK_UN)
                fcntl.flock(self._lock_file, fcntl.LOCK_EX)
                if os.path.exists(self._sentinel):
                    self._skip = True
                    fcntl.flock(self._lock_file, fcntl.LOCK_SH)
                else:
                    self._skip = False
                    if os.path.exists(self.dir):
                        shutil.rmtree(self.dir)
                    os.makedirs(self.dir, exist_ok=True)
        except BaseException:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            raise

    def pull_files(self, allow_pattern: Optional[List[str]] = None,
                   ignore_pattern: Optional[List[str]] = None) -> None:
        if self._skip:
            return
        pull_files(self._model_path, self.dir, allow_pattern, ignore_pattern,
                   self._s3_credentials)

    def _release(self) -> None:
        lock_file = getattr(self, "_lock_file", None)
        if lock_file is not None and not lock_file.closed:
            try:
                fcntl.flock(lock_file, fcntl.LOCK_UN)
            finally:
                lock_file.close()

    def __del__(self) -> None:
        self._release()

    def __enter__(self) -> ObjectStorageModel:
        return self

    def __exit__(self, exc_type, exc_val, exc_tb) -> bool:
        try:
            if exc_type is None and not self._skip:
                downloaded = [f for f in os.listdir(self.dir) if f != self.SENTINEL_NAME]
                if not downloaded:
                    raise RuntimeError(
                        f"No files were downloaded to {self.dir!r} — "
                        "verify that the model path is correct")
                try:
                    with open(self._sentinel, "w"):
                        pass
                except OSError as exc:
                    raise RuntimeError(
                        f"Failed to write download sentinel {self._sentinel!r}: {exc}") from exc
        finally:
            self._release()
        return False


class _Planned:
    """One file of a stream: its reader and the tensors to load from it."""

    def __init__(self, file_index, reader, tensors, entries, dtypes):
        self.file_index = file_index
        self.reader = reader
        self.tensors = tensors      # SafetensorMetadata, byte order
        self.entries = entries      # the reader's entry index of each
        self.dtypes = dtypes        # the core's torch dtype name of each


class SafetensorsStreamer:
    """Streams the tensors of safetensors files: `stream_files(paths)`,
    then `get_tensors()` yields `(name, tensor)`, each file's tensors in
    byte order. Tensors are always owned by the caller (their own memory,
    64-byte aligned), whatever `owned` says."""

    def __init__(self) -> None:
        self.file_streamer = DistributedStreamer()
        self.files_to_tensors_metadata = {}
        self.total_size = 0
        self.device_str = None
        self.start_time = None
        self.unaligned_copies = 0
        self._plan: List[_Planned] = []

    def __enter__(self) -> SafetensorsStreamer:
        self.file_streamer.__enter__()
        return self

    def __exit__(self, exc_type, exc_value, traceback) -> None:
        self._plan = []
        return self.file_streamer.__exit__(exc_type, exc_value, traceback)

    def stream_file(self, path: str, s3_credentials: Optional[S3Credentials] = None,
                    device: Optional[str] = "cpu", is_distributed: bool = False,
                    tensor_names: Optional[Collection[str]] = None,
                    owned: bool = True) -> None:
        return self.stream_files([path], s3_credentials=s3_credentials, device=device,
                                 is_distributed=is_distributed, tensor_names=tensor_names,
                                 owned=owned)

    def stream_files(self, paths: List[str], s3_credentials: Optional[S3Credentials] = None,
                     device: Optional[str] = "cpu", is_distributed: bool = False,
                     tensor_names: Optional[Collection[str]] = None,
                     owned: bool = True) -> None:
        if isinstance(tensor_names, str):
            raise ValueError("tensor_names must be a collection of names, not a single str")
        if tensor_names is not None and len(tensor_names) == 0:
            raise ValueError("tensor_names must not be empty - pass None to load every tensor")
        self.file_streamer.set_is_distributed(is_distributed, device or "cpu")
        if not self.file_streamer.is_distributed:
            return self._open(paths, s3_credentials, device, tensor_names)
        # A rank that cannot open its files fails every rank, naming it.
        from tensorizer_rs import distributed
        _, failure = distributed.attempt(
            lambda: self._open(paths, s3_credentials, device, tensor_names))
        distributed.agree("to open its files", failure, self.file_streamer.group)

    def _open(self, paths, s3_credentials, device, tensor_names) -> None:
        if tensor_names is not None:
            tensor_names = frozenset(tensor_names)
        self.files_to_tensors_metadata = {}
        self.total_size = 0
        self.device_str = device
        self.unaligned_copies = 0
        self.start_time = timer()
        safetensors_pytorch.prepare_request(self.file_streamer, paths, s3_credentials)
        plan, kept_names = [], []
        for i, path in enumerate(paths):
            reader = safetensors_pytorch.open_reader(self.file_streamer, path, s3_credentials)
            _, tensors, index = safetensors_pytorch.read_metadata(reader)
            rows = reader.entries()
            if tensor_names is not None:
                tensors = [t for t in tensors if t.name in tensor_names]
                kept_names.extend(t.name for t in tensors)
            entries = [index[t.name] for t in tensors]
            self.files_to_tensors_metadata[i] = tensors
            self.total_size += sum(t.get_bytesize() for t in tensors)
            plan.append(_Planned(i, reader, tensors, entries, [rows[e][2] for e in entries]))
        if tensor_names is not None:
            missing = tensor_names - set(kept_names)
            if missing:
                raise ValueError(f"tensor_names not found in checkpoint: {sorted(missing)}")
            if len(set(kept_names)) != len(kept_names):
                counts = Counter(kept_names)
                raise ValueError(
                    "tensor_names requested tensors that appear in more than one file: "
                    f"{sorted(n for n, c in counts.items() if c > 1)}")
        self._plan = plan

    def _windows(self):
        """The plan cut into windows of at most half the memory limit (one
        tensor at least): `[(planned file, [positions])]` each."""
        limit = memory_limit()
        budget = max(1, (limit if limit is not None else 2 * DEFAULT_WINDOW) // 2)
        window, held = [], 0
        for p in self._plan:
            for k, t in enumerate(p.tensors):
                size = t.get_bytesize()
                if window and held + size > budget:
                    yield window
                    window, held = [], 0
                if window and window[-1][0] is p:
                    window[-1][1].append(k)
                else:
                    window.append((p, [k]))
                held += size
        if window:
            yield window

    def _read(self, window):
        """The tensors of one window, in order: `[(name, tensor)]`."""
        from tensorizer_rs.serialization import _to_tensor as to_tensor
        device = torch.device(self.device_str or "cpu")
        ordinal = None
        if device.type == "cuda":
            from tensorizer_rs import _native
            index = device.index or 0
            if hasattr(_native.Reader, "read_cuda") and _native.cuda_devices() > index:
                ordinal = index
        out = []
        for p, positions in window:
            entries = [p.entries[k] for k in positions]
            if ordinal is not None:
                capsules = p.reader.read_cuda(entries, ordinal)
            else:
                capsules = p.reader.read(entries)
            for k, capsule in zip(positions, capsules):
                meta = p.tensors[k]
                t = to_tensor(capsule, p.dtypes[k], meta.shape)
                if ordinal is None and device.type != "cpu":
                    t = t.to(device)
                out.append((meta.name, t))
        return out

    def _get_distributed(self) -> Iterator:
        """Every planned tensor, read once by the group: each rank reads its
        share of every window, the shares are broadcast, and every rank
        yields every tensor (see `tensorizer_rs.distributed`)."""
        from tensorizer_rs import distributed
        extents, labels = [], []
        for f, p in enumerate(self._plan):
            rows = p.reader.entries()
            for k, e in enumerate(p.entries):
                row = rows[e]
                extents.append((f, int(row[6]), int(row[4]), False))
                labels.append((p, k))
        readers = [p.reader for p in self._plan]
        largest = max((e[2] for e in extents), default=0)
        group = self.file_streamer.group
        budget = distributed.env_budget(group, floor=largest)
        request = max((r.request_size for r in readers), default=16 << 20)
        for k, buffer in distributed.exchange(
                extents, distributed.raw_reader(readers, extents), group=group,
                device=self.device_str, budget=budget, request_size=request,
                alignment=get_dist_buffer_alignment()):
            p, pos = labels[k]
            meta = p.tensors[pos]
            yield meta.name, distributed.tensor_from_bytes(buffer, p.dtypes[pos], meta.shape)
        self._log_throughput()

    def get_tensors(self) -> Iterator:
        """Yields `(name, tensor)`; the next window is read while this one
        is consumed when both fit in RUNAI_STREAMER_MEMORY_LIMIT (a window
        holding one tensor larger than half the limit is read after the
        one before it was handed over, not alongside it)."""
        from collections import deque
        if self.file_streamer.is_distributed:
            yield from self._get_distributed()
            return
        windows = list(self._windows())
        sizes = [sum(p.tensors[k].get_bytesize() for p, ks in w for k in ks) for w in windows]
        limit = memory_limit()
        with ThreadPoolExecutor(max_workers=1) as pool:
            ahead = pool.submit(self._read, windows[0]) if windows else None
            for i in range(len(windows)):
                current, ahead = deque(ahead.result()), None
                more = i + 1 < len(windows)
                if more and (limit is None or sizes[i] + sizes[i + 1] <= limit):
                    ahead = pool.submit(self._read, windows[i + 1])
                # Popped as handed over: this generator keeps no reference
                # to a tensor the caller has dropped.
                while current:
                    yield current.popleft()
                if more and ahead is None:
                    ahead = pool.submit(self._read, windows[i + 1])
        self._log_throughput()

    def _log_throughput(self) -> None:
        if self.start_time is None:
            return
        elapsed = timer() - self.start_time
        rate = self.total_size / elapsed if elapsed > 0 else 0
        logger.info(
            f"[RunAI Streamer] Overall time to stream {self.total_size} bytes of all files to "
            f"{self.device_str}: {round(elapsed, 2)}s, {rate / (1 << 30):.2f} GiB/s "
            "(tensorizer_rs)")
