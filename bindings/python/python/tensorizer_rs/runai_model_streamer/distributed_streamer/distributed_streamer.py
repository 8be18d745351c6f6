"""DistributedStreamer: Run:ai's streamer over a torch.distributed group.
Until distributed loads land here, it is a FileStreamer that refuses
`is_distributed=True` with a clear error rather than reading every byte on
every rank in silence."""

from typing import Optional, Tuple

from ..file_streamer.file_streamer import FileStreamer
from ..file_streamer.requests_iterator import FileChunks  # noqa: F401  (Run:ai's import path)


class DistributedStreamer(FileStreamer):
    def get_group_size(self) -> int:
        return 1

    def set_is_distributed(self, is_distributed: bool, device: str) -> None:
        if is_distributed:
            raise NotImplementedError(
                "tensorizer_rs's runai_model_streamer does not stream distributed yet "
                "(is_distributed=True)")

    def ring_info(self) -> Optional[Tuple[int, int, int]]:
        """No ring of Run:ai's here: the core stages in its own buffers."""
        return None
