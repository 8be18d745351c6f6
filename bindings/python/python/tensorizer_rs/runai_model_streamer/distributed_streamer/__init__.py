from .distributed_streamer import DistributedStreamer
from ..file_streamer.requests_iterator import FileChunks

__all__ = ["DistributedStreamer", "FileChunks"]
