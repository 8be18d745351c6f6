"""What a read request is: a file and the byte ranges to read from it."""

from typing import List

RUNAI_STREAMER_MEMORY_LIMIT_ENV_VAR_NAME = "RUNAI_STREAMER_MEMORY_LIMIT"
RUNAI_STREAMER_RING_BUFFERS_ENV_VAR_NAME = "RUNAI_STREAMER_RING_BUFFERS"
RUNAI_STREAMER_MAX_PADS_PER_BUFFER_ENV_VAR_NAME = "RUNAI_STREAMER_MAX_PADS_PER_BUFFER"
RUNAI_STREAMER_CONCURRENCY_ENV_VAR_NAME = "RUNAI_STREAMER_CONCURRENCY"
RUNAI_STREAMER_CHUNK_BYTESIZE_ENV_VAR_NAME = "RUNAI_STREAMER_CHUNK_BYTESIZE"


class FileChunks:
    """One file plus the (offset, size) ranges to read from it, as parallel
    lists; ranges need not be contiguous nor ordered."""

    def __init__(self, id: int, path: str, offsets: List[int], sizes: List[int]) -> None:
        if len(offsets) != len(sizes):
            raise ValueError(
                f"offsets ({len(offsets)}) and sizes ({len(sizes)}) must be parallel")
        self.id = id
        self.path = path
        self.offsets = offsets
        self.sizes = sizes

    @staticmethod
    def contiguous(id: int, path: str, offset: int, sizes: List[int]) -> "FileChunks":
        """Sizes laid out back to back from `offset`."""
        offsets = []
        for size in sizes:
            offsets.append(offset)
            offset += size
        return FileChunks(id, path, offsets, sizes)

    def total_size(self) -> int:
        return sum(self.sizes)

    def max_chunk_size(self) -> int:
        return max(self.sizes)

    def __repr__(self) -> str:
        return (f"FileChunks(id='{self.id}', path='{self.path}', "
                f"num_ranges={len(self.sizes)}, total_size={self.total_size()})")
