"""Distributed loads: one model, many processes, every byte read once.

The ranks of a `torch.distributed` process group (the default group when
none is given) each compute the same plan from the same headers (the
core's `tensorizer::distributed::partition`: consecutive shares balanced
by bytes, cut on the store's request size, a verified or encrypted tensor
never split), read their share through the Rust core (hashes and MACs
checked there, by the rank that read the bytes), then the group
broadcasts every share from the rank that read it. Every rank ends with
every requested byte: CPU tensors on gloo, device tensors on NCCL.

Memory: the load goes a window at a time, each window at most half the
per-rank budget (one extent at least); the next window's share is read
while this one is exchanged, so a rank holds at most two windows of
buffers besides what the caller keeps.

Faults: after reading its share of a window each rank reports to the
others (one small all-gather); a rank that could not read makes every rank
raise `DistributedLoadError` naming it and its error, with nothing of that
window handed out. A rank that dies makes the others' next collective fail
(at once on a closed connection, else at the group's timeout), raised as
the same error.

    from tensorizer_rs.distributed import load_safetensors
    tensors = load_safetensors(["s3://models/llama/model-00001-of-00002.safetensors", ...])
"""

from __future__ import annotations

import os
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from . import _native

__all__ = [
    "DEFAULT_BUDGET",
    "DistributedLoadError",
    "agree",
    "attempt",
    "enabled",
    "env_budget",
    "env_timeout",
    "exchange",
    "load_safetensors",
    "node_group",
    "node_share",
    "raw_reader",
    "tensor_from_bytes",
]

# Bytes of buffers a rank holds at once when no budget is given.
DEFAULT_BUDGET = 1 << 30

# (file index, offset in the file, bytes, read whole by one rank)
Extent = Tuple[int, int, int, bool]
# (extent index, start inside it, bytes, CPU uint8 tensor to fill)
Job = Tuple[int, int, int, torch.Tensor]


class DistributedLoadError(RuntimeError):
    """A distributed load failed on some rank; raised on every rank."""


def _global_rank(group, r: int) -> int:
    if group is None:
        return r
    return dist.get_global_rank(group, r)


def node_share(total: Optional[int], group=None, floor: int = 0) -> Optional[int]:
    """A node-wide byte total divided among this node's ranks of `group`
    (RUNAI_STREAMER_MEMORY_LIMIT's rule since Run:ai 0.16), at least
    `floor` (one extent must fit); None stays None (unlimited)."""
    if total is None:
        return None
    world = dist.get_world_size(group)
    hosts: List[Optional[str]] = [None] * world
    dist.all_gather_object(hosts, socket.gethostname(), group=group)
    local = max(1, hosts.count(socket.gethostname()))
    return max(total // local, floor)


def node_group(timeout_s: Optional[float] = None, everywhere: bool = False):
    """A new group of this node's ranks of the default group (all ranks
    with `everywhere`), with `timeout_s` as its collectives' timeout: what
    Run:ai's streamer exchanges over (each node reads the model once and
    broadcasts it over its own links). Every rank must call it, in the
    same order; destroy it with `dist.destroy_process_group(group)`."""
    from datetime import timedelta
    timeout = timedelta(seconds=timeout_s) if timeout_s else None
    kwargs = {"timeout": timeout} if timeout is not None else {}
    world = dist.get_world_size()
    if everywhere:
        return dist.new_group(ranks=list(range(world)), **kwargs)
    hosts: List[Optional[str]] = [None] * world
    dist.all_gather_object(hosts, socket.gethostname())
    by_host = [[r for r, h in enumerate(hosts) if h == host] for host in sorted(set(hosts))]
    # Every rank creates every group, in one order (a collective each).
    groups = [dist.new_group(ranks=ranks, **kwargs) for ranks in by_host]
    me = dist.get_rank()
    return next(g for ranks, g in zip(by_host, groups) if me in ranks)


def _collective(what: str, rank: int, world: int, fn):
    try:
        return fn()
    except DistributedLoadError:
        raise
    except Exception as e:  # gloo/NCCL raise RuntimeError and kin
        raise DistributedLoadError(
            f"rank {rank} of {world}: {what} failed ({type(e).__name__}: {e}); another rank "
            "died or stopped answering within the group's timeout") from e


def agree(what: str, failure: Optional[str], group=None) -> None:
    """Every rank says whether `what` failed for it (`failure`: its error,
    or None); if it failed anywhere, every rank raises naming the ranks
    and their errors. One small all-gather."""
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    reports: List[Optional[str]] = [None] * world
    _collective(f"reporting on {what}", rank, world,
                lambda: dist.all_gather_object(reports, failure, group=group))
    failed = [(r, m) for r, m in enumerate(reports) if m]
    if failed:
        raise DistributedLoadError("; ".join(
            f"rank {r} of {world} failed {what}: {m}" for r, m in failed))


def attempt(fn):
    """`(fn(), None)`, or `(None, its error as text)`."""
    try:
        return fn(), None
    except Exception as e:
        return None, f"{type(e).__name__}: {e}"


def exchange(extents: Sequence[Extent], read: Callable[[List[Job]], Optional[Dict[int, torch.Tensor]]],
             *, group=None, device=None, budget: Optional[int] = None,
             request_size: int = 16 << 20,
             alignment: int = 64) -> Iterator[Tuple[int, torch.Tensor]]:
    """Yields `(extent index, uint8 tensor of its bytes)` in extent order,
    the same on every rank of `group`.

    `read(jobs)` fills this rank's share: for each `(k, start, length,
    buffer)`, bytes `start .. start + length` of extent `k` into the CPU
    uint8 `buffer`. It may instead return `{k: uint8 tensor}` for extents
    it read whole into memory of its own (a tensor the core decrypted),
    which then stand for their buffers. It runs on a reader thread, while
    the previous window is exchanged. Each extent's buffer starts on a
    multiple of `alignment` bytes (a tensor's own memory, never a view
    shared with another extent)."""
    if not dist.is_available() or not dist.is_initialized():
        raise DistributedLoadError(
            "a distributed load needs torch.distributed initialized "
            "(torch.distributed.init_process_group)")
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    if device is None:
        device = torch.device("cuda", torch.cuda.current_device()) \
            if dist.get_backend(group) == "nccl" else torch.device("cpu")
    device = torch.device(device)
    sizes = [int(e[2]) for e in extents]
    window = max(1, (budget if budget is not None else DEFAULT_BUDGET) // 2)
    windows: List[List[int]] = []
    held = 0
    for k, size in enumerate(sizes):
        if not windows or (held + size > window and held > 0):
            windows.append([])
            held = 0
        windows[-1].append(k)
        held += size

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tensorizer-dist-read")

    def prepare(w: int):
        ks = windows[w]
        buffers = {k: _aligned(sizes[k], alignment, device) for k in ks}
        plan = _native.partition([tuple(extents[k]) for k in ks], world, int(request_size))
        spans = [[(ks[j], start, length) for j, start, length in mine] for mine in plan]

        def job():
            try:
                jobs, moves = [], []
                for k, start, length in spans[rank]:
                    if length == 0:
                        continue
                    dest = buffers[k][start:start + length]
                    staging = dest if dest.device.type == "cpu" else \
                        torch.empty(length, dtype=torch.uint8)
                    jobs.append((k, start, length, staging))
                    moves.append((k, dest, staging))
                replaced = read(jobs) or {}
                for k, t in replaced.items():
                    if t.dtype != torch.uint8 or t.numel() != sizes[k]:
                        raise ValueError(f"extent {k}: read returned {t.numel()} {t.dtype}, "
                                         f"not {sizes[k]} bytes")
                    buffers[k] = t.to(device) if t.device != device else t
                for k, dest, staging in moves:
                    if staging is not dest and k not in replaced:
                        dest.copy_(staging)
                return None
            except BaseException as e:  # reported to every rank
                return f"{type(e).__name__}: {e}"

        return buffers, spans, pool.submit(job)

    # Every rank must plan the same load, or the broadcasts would pair up
    # wrong: the extents' digest is compared before any byte moves.
    import hashlib
    digest = hashlib.sha256(repr([tuple(e) for e in extents]).encode()).hexdigest()[:16]
    digests: List[Optional[str]] = [None] * world
    _collective("comparing plans", rank, world,
                lambda: dist.all_gather_object(digests, digest, group=group))
    if len(set(digests)) > 1:
        raise DistributedLoadError(
            f"the ranks were asked for different loads (plan digests {digests}): every rank "
            "of a distributed load must ask for the same files and tensors")
    ahead = prepare(0) if windows else None
    try:
        for w in range(len(windows)):
            buffers, spans, reading = ahead
            ahead = None
            agree("to read its share", reading.result(), group)
            if w + 1 < len(windows):
                ahead = prepare(w + 1)
            order = sorted((k, start, length, r) for r, mine in enumerate(spans)
                           for k, start, length in mine if length)
            for k, start, length, r in order:
                piece = buffers[k][start:start + length]
                _collective(f"broadcasting rank {r}'s bytes", rank, world,
                            lambda: dist.broadcast(piece, src=_global_rank(group, r), group=group))
            for k in windows[w]:
                yield k, buffers.pop(k)
    finally:
        if ahead is not None:
            ahead[2].result()
        pool.shutdown(wait=True)


def _aligned(size: int, alignment: int, device) -> torch.Tensor:
    """`size` uninitialized bytes starting on a multiple of `alignment`."""
    if alignment <= 64 or size == 0:
        return torch.empty(size, dtype=torch.uint8, device=device)
    raw = torch.empty(size + alignment, dtype=torch.uint8, device=device)
    skip = (-raw.data_ptr()) % alignment
    return raw[skip:skip + size]


def raw_reader(sources, extents: Sequence[Extent]):
    """A `read` for raw byte ranges: each job read from its file's source
    straight into its buffer, several at once."""
    def read(jobs: List[Job]):
        def one(job):
            k, start, length, buffer = job
            file, offset = extents[k][0], extents[k][1]
            sources[file].read_into(offset + start, buffer.__dlpack__())
        with ThreadPoolExecutor(max_workers=max(1, min(8, len(jobs)))) as pool:
            for _ in pool.map(one, sorted(jobs, key=lambda j: -j[2])):
                pass
        return None
    return read


def tensor_from_bytes(buffer: torch.Tensor, dtype_name: str, shape) -> torch.Tensor:
    """An exchanged uint8 buffer as the tensor it holds (no copy)."""
    dtype = getattr(torch, dtype_name)
    return buffer.view(dtype).reshape(tuple(shape))


def load_safetensors(paths: Sequence[str], *, group=None, device=None,
                     budget: Optional[int] = None, storage=None,
                     tensor_names=None) -> Dict[str, torch.Tensor]:
    """Every tensor of the safetensors files `paths` (any store), read once
    by the group: each rank returns the same dict."""
    if not dist.is_available() or not dist.is_initialized():
        raise DistributedLoadError(
            "a distributed load needs torch.distributed initialized "
            "(torch.distributed.init_process_group)")
    readers, failure = attempt(lambda: [_native.Reader(p, storage=storage) for p in paths])
    agree("to open its files", failure, group)
    extents, meta = [], []
    for f, reader in enumerate(readers):
        for name, _, dtype_name, shape, length, _, data_offset, _ in reader.entries():
            if tensor_names is not None and name not in tensor_names:
                continue
            extents.append((f, data_offset, length, False))
            meta.append((name, dtype_name, shape))
    request = max((r.request_size for r in readers), default=16 << 20)
    out = {}
    for k, buffer in exchange(extents, raw_reader(readers, extents), group=group, device=device,
                              budget=budget, request_size=request):
        name, dtype_name, shape = meta[k]
        out[name] = tensor_from_bytes(buffer, dtype_name, shape)
    return out


def env_timeout() -> Optional[float]:
    """RUNAI_STREAMER_DIST_TIMEOUT in seconds, if set."""
    value = os.environ.get("RUNAI_STREAMER_DIST_TIMEOUT")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"RUNAI_STREAMER_DIST_TIMEOUT must be a number of seconds, not {value!r}")


def env_budget(group=None, floor: int = 0) -> Optional[int]:
    """RUNAI_STREAMER_MEMORY_LIMIT as this rank's budget: a node total
    divided among the node's ranks (None when unset or -1: the default
    budget)."""
    from .runai_model_streamer.file_streamer.file_streamer import memory_limit
    limit = memory_limit()
    if limit is None:
        return None
    return node_share(limit, group, floor=max(floor, 1))


def enabled(is_distributed: bool, device) -> bool:
    """Whether a Run:ai call asking `is_distributed` streams distributed
    here: RUNAI_STREAMER_DIST `0` never, `1` on any backend, `auto` (the
    default) on NCCL only, as Run:ai decides; and only with an initialized
    group of more than one rank whose backend matches the device."""
    if not is_distributed:
        return False
    mode = os.environ.get("RUNAI_STREAMER_DIST", "auto")
    if mode not in ("0", "1", "auto"):
        raise ValueError(f"Invalid value for RUNAI_STREAMER_DIST: {mode}")
    if mode == "0" or not dist.is_available() or not dist.is_initialized():
        return False
    if dist.get_world_size() <= 1:
        return False
    backend = dist.get_backend()
    on_cpu = torch.device(device or "cpu").type == "cpu"
    if backend == "nccl" and on_cpu or backend == "gloo" and not on_cpu:
        return False
    return mode == "1" or backend == "nccl"
