"""`tensorizer.serialization` as tensorizer 2.12.1 defines it, over
`tensorizer_rs._native`: TensorDeserializer, TensorSerializer, the
encryption parameters, and the types and constants the library exports.

What reads and writes the bytes is the Rust core: tensors are read in
parallel ranges straight into aligned buffers that torch (or numpy) takes
over without a copy (DLPack); files are written at planned offsets in
parallel and appear atomically.
"""

import collections.abc
import dataclasses
import enum
import hashlib
import io
import logging
import math
import os
import shutil
import stat
import tempfile
import types
import warnings
import zlib
from enum import IntEnum
from typing import Callable, List, Optional, Tuple, Union

from . import _native, stream_io
from ._native import CryptographyError as _NativeCryptographyError
from ._native import HashMismatchError as _NativeHashMismatchError

try:
    import torch
except ImportError:  # numpy arrays are handed out instead
    torch = None

__all__ = [
    "TensorSerializer",
    "TensorDeserializer",
    "TensorType",
    "CryptographyError",
    "EncryptionParams",
    "DecryptionParams",
    "FilterFuncType",
]

logger = logging.getLogger(__name__)

# The exceptions are the native ones, so errors raised by the core are
# instances of these very classes.
CryptographyError = _NativeCryptographyError
HashMismatchError = _NativeHashMismatchError

FilterFuncType = Callable[[Union[str, Tuple]], bool]

# Data versions, as the library names them.
TENSORIZER_VERSION = 5
LONG_TENSOR_TENSORIZER_VERSION = 5
META_TENSOR_TENSORIZER_VERSION = 4
ENCRYPTION_TENSORIZER_VERSION = 3
OPAQUE_TENSORIZER_VERSION = 2
NON_OPAQUE_TENSORIZER_VERSION = 1
TENSORIZER_MAGIC = b"|TZR|"


class TensorType(IntEnum):
    PARAM = 0
    BUFFER = 1
    STATE_DICT = 2


class HashType(IntEnum):
    CRC32 = 0
    SHA256 = 1


@dataclasses.dataclass(order=True)
class TensorHash:
    """One hash stored with a tensor: CRC-32 (4 bytes, little-endian) or
    SHA-256, over the tensor's hashable header bytes and its data."""

    __slots__ = ("type", "hash")
    type: HashType
    hash: bytes


class _FileFeatureFlags(enum.IntFlag):
    encrypted = enum.auto()
    versioned_headers = enum.auto()


@dataclasses.dataclass
class _FileHeader:
    """The file header: data version, feature flags, total tensor bytes
    and tensor count."""

    __slots__ = ("version_number", "feature_flags", "tensor_size", "tensor_count")
    version_number: int
    feature_flags: _FileFeatureFlags
    tensor_size: int
    tensor_count: int


class EncryptionParams:
    """How a TensorSerializer encrypts: a 32-byte key, random or derived
    from a passphrase with Argon2id (libsodium crypto_pwhash)."""

    class OpsLimit(IntEnum):
        MIN = 1
        INTERACTIVE = 2
        MODERATE = 3
        SENSITIVE = 4

    class MemLimit(IntEnum):
        MIN = 8192
        INTERACTIVE = 64 << 20
        MODERATE = 256 << 20
        SENSITIVE = 1 << 30

    def __init__(self, key: bytes):
        if not isinstance(key, (bytes, bytearray)) or len(key) != 32:
            raise ValueError("the key must be exactly 32 bytes")
        self.key = bytes(key)
        self._kdf = None

    @classmethod
    def random(cls) -> "EncryptionParams":
        return cls(bytes(_native.random_key()))

    @classmethod
    def from_string(cls, source, opslimit=None, memlimit=None, salt=None, *, encoding="utf-8"):
        if isinstance(source, str):
            source = source.encode(encoding)
        if not source:
            raise ValueError("the passphrase is empty")
        opslimit = int(opslimit if opslimit is not None else cls.OpsLimit.MODERATE)
        memlimit = int(memlimit if memlimit is not None else cls.MemLimit.MODERATE)
        salt = bytes(salt) if salt is not None else os.urandom(16)
        if len(salt) != 16:
            raise ValueError("the salt must be 16 bytes")
        p = cls(bytes(_native.derive_key(source, opslimit, memlimit, salt)))
        p._kdf = (opslimit, memlimit, salt, bytes(source))
        return p

    @property
    def salt(self) -> bytes:
        if self._kdf is None:
            raise ValueError("only keys made by from_string have a salt")
        return self._kdf[2]

    def __repr__(self):
        return f"<EncryptionParams {'passphrase' if self._kdf else 'key'}: redacted>"


class DecryptionParams:
    """How a TensorDeserializer decrypts: the key, or the passphrase (the
    key is re-derived from the parameters stored with each tensor)."""

    def __init__(self):
        self.key = None
        self.source = None

    @classmethod
    def from_key(cls, key: bytes) -> "DecryptionParams":
        if len(key) != 32:
            raise ValueError("the key must be exactly 32 bytes")
        p = cls()
        p.key = bytes(key)
        return p

    @classmethod
    def from_string(cls, source, *, encoding="utf-8") -> "DecryptionParams":
        if isinstance(source, str):
            source = source.encode(encoding)
        if not source:
            raise ValueError("the passphrase is empty")
        p = cls()
        p.source = bytes(source)
        return p

    def __repr__(self):
        return "<DecryptionParams: redacted>"


# -- where a file is read from ----------------------------------------------

def _is_regular_fd(fd):
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        return False


def _fileno(file_obj):
    try:
        return file_obj.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation, ValueError):
        return None


def _plain_fd(file_obj, *, write):
    """The descriptor of `file_obj` when its bytes are the file's and its
    mode allows the operation: a `FileIO`, or a buffered reader, writer or
    random-access file over one. Wrappers that transform bytes (gzip, bz2,
    lzma, codecs) expose the descriptor of the file beneath them, whose
    bytes are not theirs; a file opened "rb" must not be written through
    its descriptor."""
    raw = file_obj
    if isinstance(file_obj, (io.BufferedReader, io.BufferedWriter, io.BufferedRandom)):
        raw = file_obj.raw
    if type(raw) is not io.FileIO:
        return None
    try:
        allowed = file_obj.writable() if write else file_obj.readable()
    except ValueError:  # closed
        return None
    return _fileno(file_obj) if allowed else None


def _open_reader(file_obj, crypto):
    """A native Reader for what the caller passed: a path or URI, a
    `stream_io` stream, a file object (read where it stands, through its
    descriptor: never reopened by name), or any readable object (copied to
    memory or, when large, to an unnamed temporary file)."""
    if isinstance(file_obj, int) and not isinstance(file_obj, bool):
        return _native.Reader.from_fd(file_obj, 0, f"<fd {file_obj}>", **crypto)
    if isinstance(file_obj, (str, bytes, os.PathLike)):
        uri = os.fsdecode(file_obj)
        storage = None
        if uri.lower().startswith("s3://"):
            storage = stream_io._s3_storage()
        return _native.Reader(uri, storage=storage, **crypto)
    if isinstance(file_obj, stream_io._Stream):
        direct = file_obj._direct()
        if direct is not None:
            return _native.Reader(direct[0], storage=direct[1], **crypto)
    elif isinstance(file_obj, io.TextIOBase) or (
            hasattr(file_obj, "readable") and not _readable(file_obj)):
        mode = getattr(file_obj, "mode", "")
        raise ValueError(
            'TensorDeserializer\'s file_obj must be readable and in binary mode (mode="rb"'
            + (f', current mode="{mode}"' if mode else "") + ")")
    fd = _plain_fd(file_obj, write=False)
    if fd is not None and _is_regular_fd(fd):
        try:
            position = file_obj.tell()
        except (OSError, io.UnsupportedOperation):
            position = None
        if position is not None:
            name = getattr(file_obj, "name", None)
            name = name if isinstance(name, str) else f"<fd {fd}>"
            return _native.Reader.from_fd(fd, position, name, **crypto)
    if isinstance(file_obj, io.BytesIO):
        data = file_obj.getbuffer()[file_obj.tell():]
        return _native.Reader.from_bytes(bytes(data), "<BytesIO>", **crypto)
    if not hasattr(file_obj, "read"):
        raise TypeError(
            f"cannot read from a {type(file_obj).__name__}: pass a path, a URI, a readable "
            "file object, or a stream from tensorizer_rs.stream_io.open_stream")
    # A stream the core cannot range over: copied once, in 16 MiB pieces,
    # into a temporary file that has no name by the time it is read.
    with tempfile.TemporaryFile(prefix="tensorizer_rs-") as tmp:
        shutil.copyfileobj(file_obj, tmp, 16 << 20)
        tmp.flush()
        return _native.Reader.from_fd(tmp.fileno(), 0, getattr(file_obj, "name", "<stream>")
                                      if isinstance(getattr(file_obj, "name", None), str)
                                      else "<stream>", **crypto)


def _readable(file_obj):
    try:
        return file_obj.readable()
    except Exception:
        return True


# -- tensors from capsules --------------------------------------------------

_NUMPY = {"bool": "bool", "uint8": "uint8", "int8": "int8", "int16": "int16", "int32": "int32",
          "int64": "int64", "uint16": "uint16", "uint32": "uint32", "uint64": "uint64",
          "float16": "float16", "float32": "float32", "float64": "float64",
          "complex64": "complex64", "complex128": "complex128"}


class _Capsule:
    """numpy's from_dlpack wants an object with __dlpack__."""

    def __init__(self, capsule):
        self._capsule = capsule

    def __dlpack__(self, stream=None, **kwargs):
        return self._capsule

    def __dlpack_device__(self):
        return (1, 0)


def _numpy_array(capsule, dtype_name, shape):
    """Raw bytes typed where numpy has the dtype; others (bfloat16, float8)
    stay bytes, one trailing axis per element."""
    import numpy as np
    arr = np.from_dlpack(_Capsule(capsule))
    if dtype_name in _NUMPY:
        return arr.view(_NUMPY[dtype_name]).reshape(shape)
    return arr.reshape(tuple(shape) + (-1,)) if arr.size else arr


def _to_tensor(capsule, dtype_name, shape):
    if torch is None:
        return _numpy_array(capsule, dtype_name, shape)
    t = torch.utils.dlpack.from_dlpack(capsule)
    want = getattr(torch, dtype_name, None)
    if want is not None and t.dtype != want:
        # Dtypes DLPack cannot name come as raw bytes.
        t = t.view(want).reshape(shape)
    return t


_warned_device = False


def _warn_device_copy(device):
    global _warned_device
    if not _warned_device:
        _warned_device = True
        warnings.warn(
            f"tensorizer_rs: the CUDA engine found no CUDA driver or device for {device}; "
            "tensors are loaded into host memory, then copied once", stacklevel=5)


def _engine_ordinal(device):
    """The GPU ordinal the core's CUDA engine loads `device` onto, or None
    (not a CUDA device, or no driver the engine can use: the host path and
    one copy then)."""
    if torch is None or not isinstance(device, torch.device) or device.type != "cuda":
        return None
    ordinal = device.index if device.index is not None else 0
    return ordinal if _native.cuda_devices() > ordinal else None


def _resolve_device(device):
    if torch is None:
        return device if device is not None else "cpu"
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("Cannot deserialize to CUDA device because CUDA is not available")
    if device.type == "cuda" and device.index is None:
        device = _resolve_cuda_device()
    return device


def _resolve_cuda_device():
    return torch.device("cuda", torch.cuda.current_device())


_VLLM_MARKER = ".vllm_tensorized_marker"


class TensorDeserializer(collections.abc.Mapping):
    """A read-only mapping of a `.tensors` file's tensors (torch tensors, or
    numpy arrays without torch), read in parallel by the Rust core."""

    def __init__(self, file_obj, device=None, filter_func=None, dtype=None, *,
                 lazy_load=False, plaid_mode=None, plaid_mode_buffers=None,
                 num_readers=None, verify_hash=False, encryption=None,
                 allow_unauthenticated_meta=None, process_group=None):
        if encryption is not None and not isinstance(encryption, DecryptionParams):
            raise TypeError(
                "encryption parameter: expected DecryptionParams instance or None, "
                f"{encryption.__class__.__name__} found")
        if num_readers is not None and num_readers < 1:
            raise ValueError("num_readers must be positive")
        self._reader = None
        self._closers = []
        # A torch.distributed group (`torch.distributed.group.WORLD` for the
        # default one): its ranks read each tensor once between them and
        # broadcast it (tensorizer_rs.distributed); every rank gets all.
        self._group = process_group
        if process_group is not None and lazy_load:
            raise ValueError("process_group= loads eagerly: it cannot be used with lazy_load=True")
        self._device = _resolve_device(device)
        self._dtype = dtype
        self._verify_hash = bool(verify_hash)
        self._lazy_load = lazy_load
        # Encryption authenticates data, not the index: anyone can turn a
        # tensor of an encrypted file into a meta tensor (zeros) without the
        # key. Those are refused but for the names allowed here (by default
        # vLLM's marker, whose value vLLM never reads), or all with True;
        # TENSORIZER_RS_ALLOW_UNAUTHENTICATED_META=1 restores the library's
        # behaviour (all allowed) for code that cannot pass the argument.
        if allow_unauthenticated_meta is None:
            allow_unauthenticated_meta = (
                True if os.environ.get("TENSORIZER_RS_ALLOW_UNAUTHENTICATED_META") == "1"
                else (_VLLM_MARKER,))
        allow_all_meta = allow_unauthenticated_meta is True
        allow_meta = [] if allow_all_meta or not allow_unauthenticated_meta else [
            str(n) for n in allow_unauthenticated_meta]
        crypto = dict(key=None, passphrase=None, num_readers=num_readers,
                      verify_hash=self._verify_hash, allow_meta=allow_meta,
                      allow_all_meta=allow_all_meta)
        if encryption is not None:
            if encryption.key is None and encryption.source is None:
                raise ValueError("Invalid DecryptionParams, no key or source string provided")
            crypto["key"], crypto["passphrase"] = encryption.key, encryption.source
        # The library closes what it was given when it is closed.
        if not isinstance(file_obj, (str, bytes, os.PathLike, int)) and hasattr(file_obj, "close"):
            self._closers.append(file_obj.close)
        try:
            self._reader = _open_reader(file_obj, crypto)
        except BaseException as e:
            self.close()
            if process_group is not None and isinstance(e, Exception):
                # The other ranks are told, and fail with this rank's error.
                from .distributed import agree
                agree("to open its file", f"{type(e).__name__}: {e}", process_group)
            raise
        if process_group is not None:
            from .distributed import agree
            agree("to open its file", None, process_group)
        version, flags, tensor_size, tensor_count, prologue = self._reader.file_header()
        self._file_header = _FileHeader(version, _FileFeatureFlags(flags), tensor_size,
                                        tensor_count)
        self._prologue_len = prologue
        self._entries = []
        for i, row in enumerate(self._reader.entries()):
            name, ttype, dtype_name, shape, length, header_offset, data_offset, stored = row
            if filter_func is None or filter_func(name):
                self._entries.append(_Entry(i, name, TensorType(ttype), dtype_name, tuple(shape),
                                            length, header_offset, data_offset, stored))
        self._index = {e.name: e for e in self._entries}
        self._cache = {}
        self._module_idx = None
        self.total_tensor_bytes = sum(e.length for e in self._entries)
        self.total_file_bytes = tensor_size
        self.total_compressed_tensor_bytes = 0
        self.read_bytes = 0
        if not lazy_load:
            self._load([e.index for e in self._entries])

    @property
    def _file_flags(self) -> _FileFeatureFlags:
        return self._file_header.feature_flags

    # -- loading --------------------------------------------------------
    def _check_hashes(self, entries):
        """The hashes the core verified are the file's; the library compares
        the data against `TensorHash` objects decoded from the file. Data
        that matches the stored hash S matches an expected hash E exactly
        when E == S, so comparing the two completes the same check."""
        headers = self._reader.headers([e.index for e in entries])
        for entry, (_, hashes, _) in zip(entries, headers):
            for hash_type, stored in hashes:
                expected = TensorHash(type=HashType(hash_type), hash=stored)
                if expected.hash != stored:
                    raise HashMismatchError(
                        f"Tensor '{entry.name}' failed {HashType(hash_type).name} verification.")

    def _finish(self, entry, capsule, on_device=False):
        return self._finish_tensor(entry, _to_tensor(capsule, entry.dtype, entry.shape), on_device)

    def _finish_tensor(self, entry, t, on_device=False):
        if torch is None:
            return t
        target = None
        if self._dtype is not None and t.dtype != torch.bool and t.dtype != self._dtype:
            target = self._dtype
        gradient = t.dtype.is_complex or t.dtype.is_floating_point
        device = self._device
        # Tensors from the CUDA engine are on their device already.
        moved = device.type != "cpu" and not on_device
        if moved:
            _warn_device_copy(device)
        if target is not None or moved:
            t = t.to(device=device if moved else None, dtype=target)
        return torch.nn.Parameter(t, requires_grad=gradient)

    def _load(self, indices):
        if self._reader is None:
            raise RuntimeError("this TensorDeserializer is closed")
        todo = [i for i in dict.fromkeys(indices) if i not in self._cache]
        if not todo:
            return
        if self._group is not None:
            return self._load_distributed(todo)
        ordinal = _engine_ordinal(self._device)
        if ordinal is not None:
            capsules = self._reader.read_cuda(todo, ordinal)
        else:
            capsules = self._reader.read(todo, raw=torch is None)
        by_i = {e.index: e for e in self._entries}
        if self._verify_hash:
            self._check_hashes([by_i[i] for i in todo])
        for i, c in zip(todo, capsules):
            self._cache[i] = self._finish(by_i[i], c, on_device=ordinal is not None)
            self.read_bytes += by_i[i].length

    def _load_distributed(self, todo):
        """Each tensor read (verified, decrypted) by one rank of the group,
        then broadcast: whole tensors, since a tensor's hashes and MACs
        cover all of it."""
        from .distributed import exchange
        by_i = {e.index: e for e in self._entries}
        itemsize = lambda e: torch.empty((), dtype=getattr(torch, e.dtype)).element_size()
        nbytes = {i: math.prod(by_i[i].shape) * itemsize(by_i[i]) for i in todo}
        # Tensors without data (meta, empty) cost no read: every rank
        # takes them from its own index.
        data = [i for i in todo if nbytes[i] > 0 and by_i[i].length > 0]
        local = [i for i in todo if i not in set(data)]
        from .distributed import attempt, agree
        capsules, failure = attempt(lambda: self._reader.read(local) if local else [])
        agree("to read the tensors without data", failure, self._group)
        for i, c in zip(local, capsules):
            self._cache[i] = self._finish(by_i[i], c)
        extents = [(0, by_i[i].data_offset, nbytes[i], True) for i in data]

        def read(jobs):
            wanted = [data[k] for k, _, _, _ in jobs]
            capsules = self._reader.read(wanted, raw=True)
            return {k: torch.utils.dlpack.from_dlpack(c)
                    for (k, _, _, _), c in zip(jobs, capsules)}

        for k, buffer in exchange(extents, read, group=self._group):
            e = by_i[data[k]]
            t = buffer.view(getattr(torch, e.dtype)).reshape(e.shape)
            self._cache[e.index] = self._finish_tensor(e, t, on_device=t.device.type != "cpu")
            self.read_bytes += e.length

    # -- Mapping --------------------------------------------------------
    @staticmethod
    def _top(name):
        return name if isinstance(name, str) else name[0]

    def __getitem__(self, key):
        entry = self._index.get(key)
        if entry is not None:
            self._load([entry.index])
            return self._cache[entry.index]
        if key not in self._top_keys():
            raise KeyError(key)
        # A read-only nested mapping, as the Python library returns
        # (list positions are int keys; `tree()` gives real lists).
        node = self._subtree((key,))
        return types.MappingProxyType(node) if isinstance(node, dict) else node

    def _top_keys(self):
        keys = {}
        for name in self._index:
            keys.setdefault(self._top(name), None)
        return keys

    def __iter__(self):
        return iter(self._top_keys())

    def __len__(self):
        return len(self._top_keys())

    def __contains__(self, key):
        return key in self._top_keys()

    def tree(self, prefix=None, *, default=None, filter_func=None):
        """The tensors under `prefix` (a sequence of keys) as nested dicts
        and lists, as they were written."""
        if isinstance(prefix, (str, int)):
            raise TypeError("prefix must be a sequence of path components")
        node = self._subtree(tuple(prefix or ()), filter_func)
        return default if node is None else _lists(node)

    def _subtree(self, prefix, filter_func=None):
        selected = []
        for name in self._index:
            path = (name,) if isinstance(name, str) else tuple(name)
            if path[:len(prefix)] == prefix and (filter_func is None or filter_func(name)):
                selected.append((path[len(prefix):], name))
        if not selected:
            return None
        self._load([self._index[n].index for _, n in selected])
        if len(selected) == 1 and not selected[0][0]:
            return self._cache[self._index[selected[0][1]].index]
        root = {}
        for rest, name in selected:
            node = root
            for part in rest[:-1]:
                node = node.setdefault(part, {})
            node[rest[-1]] = self._cache[self._index[name].index]
        return root

    def _module_indices(self):
        if self._module_idx is None:
            self._module_idx = self._reader.module_indices()
        return self._module_idx

    def read_tensors(self, filter_func=None, num_tensors=-1, verify_hash=None):
        """Yields (module_idx, tensor_type, name, tensor) in file order."""
        indices = self._module_indices()
        for entry in self._selected(filter_func, num_tensors):
            yield indices[entry.index], entry.type, entry.name, self[entry.name]

    def _selected(self, filter_func, num_tensors):
        """The entries passing `filter_func`, at most `num_tensors` (all
        when negative), in file order."""
        count = 0
        for entry in self._entries:
            if filter_func is not None and not filter_func(entry.name):
                continue
            if 0 <= num_tensors <= count:
                return
            count += 1
            yield entry

    def read_numpy_arrays(self, filter_func=None, num_tensors=-1, verify_hash=None,
                          allow_raw_data=False):
        """Yields (module_idx, tensor_type, name, array, is_opaque, torch
        dtype or None) in file order; dtypes numpy lacks (bfloat16, float8)
        come as raw bytes when `allow_raw_data`."""
        indices = self._module_indices()
        for entry in self._selected(filter_func, num_tensors):
            opaque = entry.dtype not in _NUMPY
            if opaque and not allow_raw_data:
                raise ValueError(
                    f"{entry.name} has an opaque datatype: (Torch: {entry.dtype}). "
                    "Set `allow_raw_data=True` to return as a numpy array of raw bytes")
            capsule, = self._reader.read([entry.index], raw=True)
            arr = _numpy_array(capsule, entry.dtype, entry.shape)
            yield (indices[entry.index], entry.type, entry.name, arr, opaque,
                   entry.dtype if opaque else None)

    def load_into_module(self, m, filter_func=None, verify_hash=None):
        """Registers each PARAM and BUFFER tensor on its submodule (names
        `"{module}.{attr}"`); returns how many were loaded."""
        modules = dict(m.named_modules())
        count = 0
        selected = []
        for entry in self._entries:
            if filter_func is not None and not filter_func(entry.name):
                continue
            if entry.type == TensorType.STATE_DICT:
                raise NotImplementedError(
                    "This was serialized using TensorSerializer.write_state_dict(), so it "
                    "cannot be loaded using TensorDeserializer.load_into_module(). Use the "
                    "TensorDeserializer object directly as a state_dict mapping instead.")
            if not isinstance(entry.name, str):
                raise NotImplementedError("Cannot deserialize structured tensor keys as a module")
            selected.append(entry)
        self._load([e.index for e in selected])
        for entry in selected:
            obj_path, attr = entry.name.rsplit(".", 1)
            module = modules[obj_path]
            tensor = self._cache[entry.index]
            if entry.type == TensorType.PARAM:
                module.register_parameter(attr, tensor)
            else:
                module.register_buffer(attr, tensor)
            count += 1
        return count

    def verify_module(self, m) -> Tuple[bool, List[Tuple[str, bool]]]:
        """Checks the module's tensors against the hashes stored in the file;
        returns (all passed, [(name, passed)])."""
        modules = dict(m.state_dict())
        modules.update(m.named_buffers())
        results = []
        entries = [e for e in self._entries if e.name in modules]
        headers = dict(zip((e.index for e in entries),
                           self._reader.headers([e.index for e in entries])))
        for entry in self._entries:
            name = entry.name
            if name not in modules:
                results.append((name, False))
                continue
            _, hashes, hashable = headers[entry.index]
            data = b"" if entry.length == 0 else _tensor_bytes(modules[name])
            ok = True
            for hash_type, stored in hashes:
                expected = TensorHash(type=HashType(hash_type), hash=stored)
                if expected.type == HashType.CRC32:
                    ok &= zlib.crc32(data, zlib.crc32(hashable)).to_bytes(4, "little") \
                        == expected.hash
                else:
                    ok &= hashlib.sha256(hashable + data).digest() == expected.hash
            results.append((name, ok))
        for name in set(self.keys()).difference(modules):
            results.append((name, False))
        return all(ok for _, ok in results), results

    def to_redis(self, redis_client, key_prefix: str, force: bool = False) -> None:
        """Copies the file into Redis under `key_prefix`, in the library's
        key layout (`{prefix}:header:0`, then each tensor's header and data
        under `{prefix}:{name}:{offset}`)."""
        if self._reader.safetensors() is not None:
            raise ValueError("to_redis copies tensorizer files (in the library's key layout); "
                             "this is a safetensors file: convert it first")
        redis_client.set(f"{key_prefix}:header:0", self._reader.read_bytes(0, self._prologue_len))
        for entry in self._entries:
            header_key = f"{key_prefix}:{entry.stored_name}:{entry.header_offset}"
            if not force and redis_client.exists(header_key):
                continue
            redis_client.set(header_key, self._reader.read_bytes(
                entry.header_offset, entry.data_offset - entry.header_offset))
            redis_client.set(f"{key_prefix}:{entry.stored_name}:{entry.data_offset}",
                             self._reader.read_bytes(entry.data_offset, entry.length))

    def close(self):
        self._reader = None
        closers, self._closers = self._closers, []
        for close in closers:
            close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class _Entry:
    __slots__ = ("index", "name", "type", "dtype", "shape", "length", "header_offset",
                 "data_offset", "stored_name")

    def __init__(self, *values):
        for slot, value in zip(self.__slots__, values):
            setattr(self, slot, value)


def _tensor_bytes(t):
    """The bytes of a tensor (or array) as the file stores them."""
    if torch is not None and isinstance(t, torch.Tensor):
        t = t.detach().to("cpu").contiguous()
        if t.numel() == 0:
            return b""
        return t.reshape(-1).view(torch.uint8).numpy().tobytes()
    import numpy as np
    return np.ascontiguousarray(t).tobytes()


def _lists(node):
    """Dicts whose keys are 0..n-1 become lists (list state dicts)."""
    if not isinstance(node, dict):
        return node
    node = {k: _lists(v) for k, v in node.items()}
    if node and all(isinstance(k, int) for k in node) and sorted(node) == list(range(len(node))):
        return [node[i] for i in range(len(node))]
    return node


# -- writing -----------------------------------------------------------------

def _torch_name(t):
    return str(t.dtype).replace("torch.", "")


def _needs_host_copy(tensor):
    """Whether writing this tensor takes a host copy of its bytes (GPU
    memory, a strided view, a lazy conjugate or negation): such tensors are
    written one per batch, so at most one copy is alive at a time."""
    if torch is not None and isinstance(tensor, torch.Tensor):
        if tensor.device.type == "meta":
            return False
        return (tensor.device.type != "cpu" or not tensor.is_contiguous()
                or tensor.is_conj() or tensor.is_neg())
    import numpy as np
    return not np.asarray(tensor).flags.c_contiguous


def _describe(tensor):
    """(dtype name, shape, is meta) without touching the bytes."""
    if torch is not None and isinstance(tensor, torch.Tensor):
        return _torch_name(tensor), list(tensor.shape), tensor.device.type == "meta"
    import numpy as np
    arr = np.asarray(tensor)
    return str(arr.dtype), list(arr.shape), False


def _device_capsule(tensor):
    """(dtype name, shape, DLPack capsule, bytes) of a CUDA tensor the core's
    engine can read back itself (a driver it can load, the tensor's GPU
    visible to it), or None (then `.cpu()`, one tensor at a time). The
    tensor's stream is synchronized first: the core copies on streams of
    its own."""
    if torch is None or not isinstance(tensor, torch.Tensor) or tensor.device.type != "cuda":
        return None
    if _engine_ordinal(tensor.device) is None:
        return None
    t = tensor.detach().resolve_conj().resolve_neg().contiguous()
    shape, dtype = list(tensor.shape), _torch_name(tensor)
    torch.cuda.current_stream(t.device).synchronize()
    return dtype, shape, torch.utils.dlpack.to_dlpack(t), t.numel() * t.element_size()


def _byte_capsule(tensor):
    """(dtype name, shape, DLPack capsule of the bytes or None for a meta
    tensor, bytes) for a torch tensor or numpy array.

    For a contiguous CPU tensor the capsule views the caller's memory: the
    native writer writes it out before the call that hands it over returns
    (`StreamWriter.add_batch`), so changing, resizing or freeing the tensor
    afterwards cannot change the file or make it read freed memory."""
    if torch is not None and isinstance(tensor, torch.Tensor):
        tensor = tensor.detach()
        shape, dtype = list(tensor.shape), _torch_name(tensor)
        if tensor.device.type == "meta":
            return dtype, shape, None, 0
        flat = tensor.to("cpu").resolve_conj().resolve_neg().contiguous().reshape(-1)
        raw = flat.view(torch.uint8) if flat.numel() else torch.empty(0, dtype=torch.uint8)
        return dtype, shape, torch.utils.dlpack.to_dlpack(raw), raw.numel()
    import numpy as np
    arr = np.asarray(tensor, order="C")
    raw = arr.reshape(-1).view(np.uint8)
    return str(arr.dtype), list(arr.shape), raw.__dlpack__(), raw.size


class TensorSerializer:
    """Writes one `.tensors` file as its tensors are handed over: the same
    bytes the Python library writes for the same calls (unencrypted).

    Each `write_tensor`, `write_module` and `write_state_dict` call's
    tensors reach the destination before the call returns (hashed, and
    encrypted if asked, as they are written), so the file holds each tensor
    as it was at its call, and host memory stays at the largest tensor that
    needs a host copy (one on a GPU, or a strided view) plus a few fixed
    buffers, whatever the model's size. `close()` writes the index: a path
    or URI appears whole and atomically only then (a failed or abandoned
    write leaves its previous content); a file object is written where it
    stands (through its descriptor, in parallel), positioned after the file
    and closed, as the library closes it; a `stream_io` write stream
    receives the bytes through its sink and is closed (committed). Leaving
    a `with` block by an exception abandons the file."""

    def __init__(self, file_obj, compress_tensors=False, *, encryption=None,
                 limit_cpu_concurrency=None):
        if encryption is not None and not isinstance(encryption, EncryptionParams):
            raise TypeError(
                "encryption parameter: expected EncryptionParams instance or None, "
                f"{encryption.__class__.__name__} found")
        key = kdf = None
        if encryption is not None:
            key, kdf = encryption.key, encryption._kdf
        self._target = _write_target(file_obj)
        self._writer = self._target.open(dict(key=key, kdf=kdf, threads=limit_cpu_concurrency))
        self.total_tensor_bytes = 0
        self.total_compressed_tensor_bytes = 0
        self._closed = False

    def _write(self, items):
        """Writes `(idx, name, tensor_type, tensor)` items, all or none
        placed: checked whole first, then handed over in batches in which
        only contiguous CPU tensors (read in place) travel together."""
        if self._closed:
            raise ValueError("this TensorSerializer is closed")
        if not items:
            return
        if len(items) > 1:
            self._writer.check_batch([
                (int(idx), name, int(tensor_type), *_describe(tensor))
                for idx, name, tensor_type, tensor in items])
        pending = []

        def flush():
            if pending:
                self._writer.add_batch(pending)
                pending.clear()

        for idx, name, tensor_type, tensor in items:
            device = _device_capsule(tensor)
            if device is not None:
                # Copied back by the core through its pinned staging ring,
                # written while the next pieces are copied.
                flush()
                dtype, shape, capsule, nbytes = device
                self._writer.add_device(int(idx), name, int(tensor_type), dtype, shape, capsule)
                self.total_tensor_bytes += nbytes
                continue
            copied = _needs_host_copy(tensor)
            if copied:
                flush()
            dtype, shape, capsule, nbytes = _byte_capsule(tensor)
            pending.append((int(idx), name, int(tensor_type), dtype, shape, capsule))
            self.total_tensor_bytes += nbytes
            if copied:
                flush()
        flush()

    def write_tensor(self, idx, name, tensor_type, tensor):
        self._write([(idx, name, tensor_type, tensor)])

    def write_module(self, m, remove_tensors=False, *, include_non_persistent_buffers=True):
        items = []
        for idx, (module_name, module) in enumerate(m.named_modules()):
            persistent = None
            if not include_non_persistent_buffers:
                persistent = set(module.state_dict(keep_vars=True).keys())
            for name, p in module.named_parameters(recurse=False):
                items.append((idx, f"{module_name}.{name}", TensorType.PARAM, p))
            for name, b in module.named_buffers(recurse=False):
                if persistent is not None and name not in persistent:
                    continue
                items.append((idx, f"{module_name}.{name}", TensorType.BUFFER, b))
        self._write(items)
        del items
        if remove_tensors:
            for module in m.modules():
                for name, _ in list(module.named_parameters(recurse=False)):
                    setattr(module, name, None)
                for name, _ in list(module.named_buffers(recurse=False)):
                    setattr(module, name, None)

    def write_state_dict(self, state_dict):
        def walk(prefix, obj):
            if isinstance(obj, collections.abc.Mapping):
                for k, v in obj.items():
                    if not isinstance(k, str):
                        raise TypeError(f"state dict keys must be str, not {type(k).__name__}")
                    yield from walk(prefix + (k,), v)
            elif isinstance(obj, (list, tuple)):
                for i, v in enumerate(obj):
                    yield from walk(prefix + (i,), v)
            else:
                yield prefix, obj
        items = []
        for path, tensor in walk((), state_dict):
            name = path[0] if len(path) == 1 and isinstance(path[0], str) else list(path)
            items.append((0, name, TensorType.STATE_DICT, tensor))
        self._write(items)

    def close(self):
        if self._closed:
            return
        self._closed = True
        try:
            n = self._writer.close()
        except BaseException:
            self._target.abort()
            raise
        finally:
            self._writer = None
        self._target.finish(n)

    def _abort(self):
        if self._closed:
            return
        self._closed = True
        self._writer.abort()
        self._writer = None
        self._target.abort()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.close()
        else:
            self._abort()
        return False


class _UriTarget:
    def __init__(self, uri):
        self.uri = uri
        self.storage = None
        if uri.lower().startswith("s3://"):
            self.storage = stream_io._s3_storage(upload=True)
        elif "://" not in uri:
            parent = os.path.dirname(uri)
            if parent:
                os.makedirs(parent, exist_ok=True)

    def open(self, crypto):
        return _native.StreamWriter(uri=self.uri, storage=self.storage, **crypto)

    def finish(self, n):
        pass

    def abort(self):
        pass


class _StreamTarget:
    """A stream_io write stream: the bytes go through its sink from where
    it stands; then it is closed, which commits them."""

    def __init__(self, stream):
        self.stream = stream

    def open(self, crypto):
        self.stream.flush()
        return _native.StreamWriter(sink=self.stream._sink, base=self.stream.tell(), **crypto)

    def finish(self, n):
        self.stream._written(n)
        self.stream.close()

    def abort(self):
        pass


class _FdTarget:
    """A file object over a regular file: written from where it stands
    through its descriptor, then positioned after the file and closed."""

    def __init__(self, file_obj, fd):
        self.file_obj, self.fd = file_obj, fd

    def open(self, crypto):
        self.file_obj.flush()
        self.base = self.file_obj.tell()
        return _native.StreamWriter(fd=self.fd, base=self.base, **crypto)

    def finish(self, n):
        self.file_obj.seek(self.base + n)
        self.file_obj.close()

    def abort(self):
        pass


class _CopyTarget:
    """Any other writable object (a pipe, a socket, a `BytesIO`): the one
    path that holds the whole file before it reaches the destination, on
    local disk (an unnamed temporary file, written in parallel), copied
    into the object in 16 MiB pieces at `close()`; then the object is
    closed. Such objects cannot be written at offsets, and the index comes
    last."""

    def __init__(self, file_obj):
        self.file_obj = file_obj

    def open(self, crypto):
        self.tmp = tempfile.TemporaryFile(prefix="tensorizer_rs-")
        return _native.StreamWriter(fd=self.tmp.fileno(), base=0, **crypto)

    def finish(self, n):
        with self.tmp:
            self.tmp.seek(0)
            shutil.copyfileobj(self.tmp, self.file_obj, 16 << 20)
        self.file_obj.close()

    def abort(self):
        self.tmp.close()


def _write_target(file_obj):
    if isinstance(file_obj, (str, bytes, os.PathLike)):
        return _UriTarget(os.fsdecode(file_obj))
    if isinstance(file_obj, stream_io._Stream):
        if not file_obj.writable():
            raise ValueError("TensorSerializer needs a stream opened for writing")
        return _StreamTarget(file_obj)
    if not hasattr(file_obj, "write"):
        raise TypeError(
            f"cannot write to a {type(file_obj).__name__}: pass a path, a URI or a writable "
            "file object")
    writable = getattr(file_obj, "writable", None)
    if callable(writable) and not writable():
        # As the library: writing to a file opened for reading fails.
        raise io.UnsupportedOperation("TensorSerializer's file_obj is not open for writing")
    fd = _plain_fd(file_obj, write=True)
    if fd is not None and _is_regular_fd(fd) and not _appends(fd):
        try:
            file_obj.tell()
            return _FdTarget(file_obj, fd)
        except (OSError, io.UnsupportedOperation):
            pass
    return _CopyTarget(file_obj)


def _appends(fd):
    try:
        import fcntl
        return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND)
    except (ImportError, OSError):
        return True
