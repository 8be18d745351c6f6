"""Safetensors headers as Run:ai's API describes them, read and checked by
the Rust core (tensorizer-format's safetensors parser: the `safetensors`
crate's rules, every size checked against the file before anything is
allocated). A broken file raises ValueError naming the tensor and rule."""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

import torch

from ..s3_utils.s3_utils import S3Credentials

SAFETENSORS_DATA_OFFSETS_KEY = "data_offsets"
SAFETENSORS_SHAPE_KEY = "shape"
SAFETENSORS_DTYPE_KEY = "dtype"
SAFETENSORS_HEADER_BUFFER_SIZE = 8

# torch dtype name (the core's) -> safetensors dtype name.
_SAFETENSORS_NAMES = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
    "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8",
    "bool": "BOOL", "complex64": "C64", "uint64": "U64", "uint32": "U32", "uint16": "U16",
    "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2", "float8_e8m0fnu": "F8_E8M0",
    "float8_e4m3fnuz": "F8_E4M3FNUZ", "float8_e5m2fnuz": "F8_E5M2FNUZ",
}


def get_safetensors_dtype_map() -> dict:
    """safetensors dtype name -> torch dtype, for the dtypes this torch has."""
    out = {}
    for torch_name, st in _SAFETENSORS_NAMES.items():
        dtype = getattr(torch, torch_name, None)
        if dtype is not None:
            out.setdefault(st, dtype)
    return out


safetensors_to_torch_dtype = get_safetensors_dtype_map()


def element_size_of(torch_dtype: torch.dtype) -> int:
    """Bytes per element."""
    itemsize = getattr(torch_dtype, "itemsize", None)
    if itemsize is not None:
        return itemsize
    return torch.tensor([], dtype=torch_dtype).element_size()


class Offsets:
    def __init__(self, offsets: List[int]) -> None:
        self.start = offsets[0]
        self.end = offsets[1]

    def get_diff(self) -> int:
        return self.end - self.start


class SafetensorMetadata:
    """One tensor: name, shape, safetensors dtype name, offsets relative to
    the first data byte."""

    def __init__(self, name: str, safetensor_metadata: Any) -> None:
        self.name = name
        self.shape = list(safetensor_metadata[SAFETENSORS_SHAPE_KEY])
        self.dtype = safetensor_metadata[SAFETENSORS_DTYPE_KEY]
        self.offsets = Offsets(safetensor_metadata[SAFETENSORS_DATA_OFFSETS_KEY])

    def get_bytesize(self) -> int:
        return self.offsets.get_diff()

    def get_item_count(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count

    def get_element_size(self) -> int:
        return element_size_of(self.get_torch_dtype())

    def get_torch_dtype(self) -> torch.dtype:
        if self.dtype not in safetensors_to_torch_dtype:
            raise ValueError(f"Unsupported dtype '{self.dtype}' in tensor '{self.name}'")
        return safetensors_to_torch_dtype[self.dtype]

    def __repr__(self) -> str:
        return (f"SafetensorMetadata(name={self.name!r}, dtype={self.dtype}, shape={self.shape}, "
                f"offsets=[{self.offsets.start}, {self.offsets.end}])")


def open_reader(fs, path: str, s3_credentials: Optional[S3Credentials]):
    """The core's reader of `path` (header read and checked), kept by the
    streamer `fs` so that the data is read through the same one."""
    readers = getattr(fs, "_readers", None)
    if readers is None:
        readers = fs._readers = {}
    if path not in readers:
        from tensorizer_rs import _native
        from ..file_streamer.file_streamer import concurrency
        from ..s3_utils.s3_utils import storage
        reader = _native.Reader(path, storage=storage(s3_credentials), num_readers=concurrency())
        if reader.safetensors() is None:
            raise ValueError(f"{path} is a tensorizer file, not a safetensors file")
        readers[path] = reader
    return readers[path]


def read_metadata(reader) -> Tuple[int, List[SafetensorMetadata], dict]:
    """`(offset of the first data byte, tensors in byte order, name -> entry
    index)` of a core reader."""
    data_start, _ = reader.safetensors()
    tensors, index = [], {}
    for i, row in enumerate(reader.entries()):
        name, _, dtype_name, shape, length, _, data_offset, _ = row
        start = data_offset - data_start
        tensors.append(SafetensorMetadata(name, {
            SAFETENSORS_SHAPE_KEY: list(shape),
            SAFETENSORS_DTYPE_KEY: _SAFETENSORS_NAMES.get(dtype_name, dtype_name),
            SAFETENSORS_DATA_OFFSETS_KEY: [start, start + length],
        }))
        index[name] = i
    return data_start, tensors, index


def prepare_request(fs, paths: List[str], s3_credentials: Optional[S3Credentials]
                    ) -> List[Tuple[int, List[SafetensorMetadata], List[int]]]:
    """Per file: `(offset of the first data byte, tensors in byte order, their
    sizes)`, from header reads only (the files are opened in parallel)."""
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(max_workers=max(1, min(len(paths), 16))) as pool:
        readers = list(pool.map(lambda p: open_reader(fs, p, s3_credentials), paths))
    out = []
    for reader in readers:
        offset, tensors, _ = read_metadata(reader)
        out.append((offset, tensors, [t.get_bytesize() for t in tensors]))
    return out


def requires_alignment_copy(buffer: Any, tensor_metadata: SafetensorMetadata) -> bool:
    """Whether `buffer`'s address cannot hold the tensor's dtype (the core's
    buffers are 64-byte aligned: never for tensors it loaded)."""
    if tensor_metadata.get_item_count() == 0:
        return False
    element_size = tensor_metadata.get_element_size()
    return element_size > 1 and buffer.data_ptr() % element_size != 0


def create_torch_tensor(buffer: Any, tensor_metadata: SafetensorMetadata) -> torch.Tensor:
    """A uint8 buffer viewed as the tensor's dtype and shape."""
    if tensor_metadata.get_item_count() == 0:
        return torch.empty(tensor_metadata.shape, dtype=tensor_metadata.get_torch_dtype())
    return buffer.view(tensor_metadata.get_torch_dtype()).reshape(tensor_metadata.shape)
