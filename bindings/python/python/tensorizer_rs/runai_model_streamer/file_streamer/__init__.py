from .file_streamer import FileStreamer
from .requests_iterator import FileChunks

__all__ = ["FileStreamer", "FileChunks"]
