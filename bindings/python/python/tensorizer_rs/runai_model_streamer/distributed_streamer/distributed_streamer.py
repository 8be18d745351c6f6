"""DistributedStreamer: Run:ai's streamer over a torch.distributed group.

With `is_distributed=True` (and RUNAI_STREAMER_DIST allowing it: `1` on
any backend, `auto`, the default, on NCCL only, `0` never; the backend
must match the device: gloo for "cpu", NCCL for CUDA), the group reads
every requested range once: each rank reads its share through the Rust
core, then the shares are broadcast (`tensorizer_rs.distributed`), and
every rank's `get_chunks` yields every chunk. Otherwise it is a
FileStreamer: each rank reads everything it is asked for.

RUNAI_STREAMER_MEMORY_LIMIT is a node total, divided among the node's
ranks (at least the largest chunk), as Run:ai does since 0.16.
"""

import logging
import os
from typing import Iterator, Optional, Tuple

from ..file_streamer.file_streamer import FileStreamer
from ..file_streamer.requests_iterator import FileChunks  # noqa: F401  (Run:ai's import path)

logger = logging.getLogger(__name__)

# Where each chunk's memory starts (bytes, a multiple of this; Run:ai's
# default 512). Each chunk has memory of its own, never a view into a
# buffer shared with other chunks, whatever `owned` says.
RUNAI_STREAMER_CUDA_ALIGNMENT_ENV_VAR = "RUNAI_STREAMER_CUDA_ALIGNMENT"
DEFAULT_DIST_BUFFER_ALIGNMENT = 512
MAX_DIST_BUFFER_ALIGNMENT = 1024 * 1024


def get_dist_buffer_alignment() -> int:
    value = int(os.environ.get(RUNAI_STREAMER_CUDA_ALIGNMENT_ENV_VAR,
                               str(DEFAULT_DIST_BUFFER_ALIGNMENT)))
    if value < 0 or value > MAX_DIST_BUFFER_ALIGNMENT:
        raise ValueError(f"{RUNAI_STREAMER_CUDA_ALIGNMENT_ENV_VAR} must be between 0 and "
                         f"{MAX_DIST_BUFFER_ALIGNMENT}, not {value}")
    return max(value, 1)


class DistributedStreamer(FileStreamer):
    def __init__(self) -> None:
        super().__init__()
        self.is_distributed = False
        self.group = None

    def __exit__(self, exc_type, exc_value, traceback) -> None:
        try:
            self._drop_group()
        finally:
            super().__exit__(exc_type, exc_value, traceback)

    def _drop_group(self) -> None:
        if self.group is not None:
            import torch.distributed as dist
            group, self.group = self.group, None
            dist.destroy_process_group(group)

    def get_group_size(self) -> int:
        import torch.distributed as dist
        return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1

    def set_is_distributed(self, is_distributed: bool, device: str) -> None:
        from tensorizer_rs import distributed
        self.is_distributed = distributed.enabled(is_distributed, device)
        if self.is_distributed and self.group is None:
            # Run:ai's group: this node's ranks (every rank with
            # RUNAI_STREAMER_DIST_GLOBAL=1), timing out after
            # RUNAI_STREAMER_DIST_TIMEOUT seconds.
            self.group = distributed.node_group(
                distributed.env_timeout(),
                everywhere=os.environ.get("RUNAI_STREAMER_DIST_GLOBAL", "0") == "1")
        if is_distributed and not self.is_distributed:
            logger.info("[RunAI Streamer][Distributed] not distributed (RUNAI_STREAMER_DIST, "
                        "backend or group size): every rank reads what it is asked for")

    def stream_files(self, file_stream_requests, credentials=None, device: Optional[str] = "cpu",
                     is_distributed: bool = False, owned: bool = True) -> None:
        self.set_is_distributed(is_distributed, device or "cpu")
        if not self.is_distributed:
            return super().stream_files(file_stream_requests, credentials, device, False, owned)
        self._requests = list(file_stream_requests)
        self._credentials = credentials
        self._device = device or "cpu"

    def get_chunks(self) -> Iterator:
        if not self.is_distributed:
            yield from super().get_chunks()
            return
        from tensorizer_rs import distributed
        requests, self._requests = self._requests, []
        extents, labels = [], []
        for f, r in enumerate(requests):
            for k, (offset, size) in enumerate(zip(r.offsets, r.sizes)):
                extents.append((f, int(offset), int(size), False))
                labels.append((r.id, k))
        sources = [self._source(r.path) for r in requests]
        largest = max((e[2] for e in extents), default=0)
        budget = distributed.env_budget(self.group, floor=largest)
        request = max((s.request_size for s in sources), default=16 << 20)
        for k, tensor in distributed.exchange(
                extents, distributed.raw_reader(sources, extents), group=self.group,
                device=self._device, budget=budget, request_size=request,
                alignment=get_dist_buffer_alignment()):
            req_id, chunk = labels[k]
            yield req_id, chunk, tensor

    def ring_info(self) -> Optional[Tuple[int, int, int]]:
        """No ring of Run:ai's here: the core stages in its own buffers."""
        return None
