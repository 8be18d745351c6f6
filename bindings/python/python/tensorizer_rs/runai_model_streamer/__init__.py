"""Run:ai Model Streamer's Python API (runai-model-streamer 0.17) over the
tensorizer_rs core.

With TENSORIZER_RS=1 in the environment, `import runai_model_streamer`
anywhere in the process (vLLM's `--load-format runai_streamer`) loads this
package. Safetensors files are read by the Rust engine: parallel ranged
reads from local files, S3, GCS or Azure, header rules checked before
anything is allocated, memory bounded by RUNAI_STREAMER_MEMORY_LIMIT.

Distributed streaming (`is_distributed=True`, RUNAI_STREAMER_DIST): the
group of `torch.distributed` reads each byte once and broadcasts it
(`tensorizer_rs.distributed`). Not provided: the internals of Run:ai's
package (its C library bindings, request iterators, slot pools).
"""

import logging
import os

from .safetensors_streamer.safetensors_streamer import (
    ObjectStorageModel,
    SafetensorsStreamer,
    list_safetensors,
    pull_files,
)
from .file_streamer.file_streamer import FileStreamer
from .file_streamer.requests_iterator import FileChunks
from .distributed_streamer.distributed_streamer import DistributedStreamer

__all__ = [
    "SafetensorsStreamer",
    "ObjectStorageModel",
    "DistributedStreamer",
    "FileStreamer",
    "FileChunks",
    "list_safetensors",
    "pull_files",
]

logging.getLogger(__name__).setLevel(
    os.environ.get("RUNAI_STREAMER_LOG_LEVEL", "INFO").upper())
