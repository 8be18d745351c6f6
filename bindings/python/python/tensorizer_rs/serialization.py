"""TensorDeserializer and TensorSerializer, as tensorizer 2.12.1 defines
them, over `tensorizer_rs._native`."""

import collections.abc
import os
import shutil
import tempfile
import types
import warnings

from . import _native
from ._native import CryptographyError, HashMismatchError  # noqa: F401

try:
    import torch
except ImportError:  # numpy arrays are handed out instead
    torch = None

__all__ = ["TensorDeserializer", "TensorSerializer", "CryptographyError", "HashMismatchError"]


def _source(file_obj):
    """(uri, s3 credentials, temporary file to remove) of what the caller
    passed. A file object without a path is copied to a temporary file
    first (the core reads ranges in parallel, which a stream cannot give)."""
    from .stream_io import _Stream
    if isinstance(file_obj, _Stream):
        return file_obj.uri, file_obj.s3, None
    if isinstance(file_obj, (str, os.PathLike)):
        return os.fspath(file_obj), {}, None
    name = getattr(file_obj, "name", None)
    if isinstance(name, str) and os.path.exists(name):
        return name, {}, None
    if hasattr(file_obj, "read"):
        tmp = tempfile.NamedTemporaryFile(prefix="tensorizer_rs-", suffix=".tensors", delete=False)
        with tmp:
            shutil.copyfileobj(file_obj, tmp, 16 << 20)
        return tmp.name, {}, tmp.name
    raise TypeError(
        f"cannot read from a {type(file_obj).__name__}: pass a path, a URI, a readable file "
        "object, or a stream from tensorizer_rs.stream_io.open_stream"
    )


_NUMPY = {"bool": "bool", "uint8": "uint8", "int8": "int8", "int16": "int16", "int32": "int32",
          "int64": "int64", "uint16": "uint16", "uint32": "uint32", "uint64": "uint64",
          "float16": "float16", "float32": "float32", "float64": "float64",
          "complex64": "complex64", "complex128": "complex128"}


def _to_tensor(capsule, dtype_name, shape):
    if torch is None:
        # Raw bytes (see _load), typed where numpy has the dtype; others
        # (bfloat16, float8) stay bytes, one trailing axis per element.
        import numpy as np
        arr = np.from_dlpack(_Capsule(capsule))
        if dtype_name in _NUMPY:
            return arr.view(_NUMPY[dtype_name]).reshape(shape)
        return arr.reshape(tuple(shape) + (-1,)) if arr.size else arr
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
            f"tensorizer_rs: this wheel has no CUDA engine; tensors for {device} are loaded "
            "into host memory, then copied once", stacklevel=4)


class _Capsule:
    """numpy's from_dlpack wants an object with __dlpack__."""

    def __init__(self, capsule):
        self._capsule = capsule

    def __dlpack__(self, stream=None):
        return self._capsule

    def __dlpack_device__(self):
        return (1, 0)


class TensorDeserializer(collections.abc.Mapping):
    """A read-only mapping of a `.tensors` file's tensors (torch tensors, or
    numpy arrays without torch), read in parallel by the Rust core."""

    def __init__(self, file_obj, device=None, filter_func=None, dtype=None, *,
                 lazy_load=False, plaid_mode=None, plaid_mode_buffers=None,
                 num_readers=None, verify_hash=False, encryption=None):
        uri, s3, temporary = _source(file_obj)
        key = passphrase = None
        if encryption is not None:
            key, passphrase = encryption.key, encryption.source
        try:
            self._reader = _native.Reader(
                uri, key=key, passphrase=passphrase, num_readers=num_readers,
                verify_hash=bool(verify_hash), **s3)
        finally:
            if temporary is not None:
                os.unlink(temporary)  # the open file stays readable
        self._device = device
        self._dtype = dtype
        rows = self._reader.entries()
        self._entries = []
        for i, (name, ttype, dtype_name, shape, length) in enumerate(rows):
            if filter_func is None or filter_func(name):
                self._entries.append((i, name, ttype, dtype_name, tuple(shape), length))
        self._index = {e[1]: e for e in self._entries}
        self._cache = {}
        self._module_idx = None
        self.total_tensor_bytes = sum(e[5] for e in self._entries)
        self.total_file_bytes = self.total_tensor_bytes
        if not lazy_load:
            self._load([e[0] for e in self._entries])

    # -- loading --------------------------------------------------------
    def _finish(self, entry, capsule):
        _, name, ttype, dtype_name, shape, _ = entry
        t = _to_tensor(capsule, dtype_name, shape)
        if torch is not None:
            if self._dtype is not None and t.is_floating_point() and t.dtype != self._dtype:
                t = t.to(self._dtype)
            if self._device is not None and str(self._device) != "cpu":
                _warn_device_copy(self._device)
                t = t.to(self._device)
            t = torch.nn.Parameter(t, requires_grad=False)
        return t

    def _load(self, indices):
        todo = [i for i in indices if i not in self._cache]
        if not todo:
            return
        capsules = self._reader.read(todo, raw=torch is None)
        by_i = {e[0]: e for e in self._entries}
        for i, c in zip(todo, capsules):
            self._cache[i] = self._finish(by_i[i], c)

    # -- Mapping --------------------------------------------------------
    @staticmethod
    def _top(name):
        return name if isinstance(name, str) else name[0]

    def __getitem__(self, key):
        entry = self._index.get(key)
        if entry is not None:
            self._load([entry[0]])
            return self._cache[entry[0]]
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
        self._load([self._index[n][0] for _, n in selected])
        if len(selected) == 1 and not selected[0][0]:
            return self._cache[self._index[selected[0][1]][0]]
        root = {}
        for rest, name in selected:
            node = root
            for part in rest[:-1]:
                node = node.setdefault(part, {})
            node[rest[-1]] = self._cache[self._index[name][0]]
        return root

    def read_tensors(self, filter_func=None, num_tensors=-1, verify_hash=None):
        """Yields (module_idx, tensor_type, name, tensor) in file order."""
        indices = self._module_indices()
        count = 0
        for entry in self._entries:
            if filter_func is not None and not filter_func(entry[1]):
                continue
            if 0 <= num_tensors <= count:
                return
            count += 1
            yield indices[entry[0]], entry[2], entry[1], self[entry[1]]

    def _module_indices(self):
        if self._module_idx is None:
            self._module_idx = self._reader.module_indices()
        return self._module_idx

    def load_into_module(self, m, filter_func=None, verify_hash=None):
        """Registers each PARAM and BUFFER tensor on its submodule (names
        `"{module}.{attr}"`); returns how many were loaded."""
        modules = dict(m.named_modules())
        count = 0
        for entry in self._entries:
            name, ttype = entry[1], entry[2]
            if filter_func is not None and not filter_func(name):
                continue
            if ttype == 2:
                raise NotImplementedError(
                    "This was serialized using TensorSerializer.write_state_dict(), so it "
                    "cannot be loaded using TensorDeserializer.load_into_module(). Use the "
                    "TensorDeserializer object directly as a state_dict mapping instead.")
            if not isinstance(name, str):
                raise NotImplementedError("Cannot deserialize structured tensor keys as a module")
            obj_path, attr = name.rsplit(".", 1)
            module = modules[obj_path]
            tensor = self[name]
            if ttype == 0:
                module.register_parameter(attr, tensor)
            else:
                module.register_buffer(attr, tensor)
            count += 1
        return count

    def close(self):
        self._reader = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def _lists(node):
    """Dicts whose keys are 0..n-1 become lists (list state dicts)."""
    if not isinstance(node, dict):
        return node
    node = {k: _lists(v) for k, v in node.items()}
    if node and all(isinstance(k, int) for k in node) and sorted(node) == list(range(len(node))):
        return [node[i] for i in range(len(node))]
    return node


def _torch_name(t):
    return str(t.dtype).replace("torch.", "")


class TensorSerializer:
    """Collects tensors and writes one `.tensors` file on `close()`: the same
    bytes the Python library writes for the same tensors (unencrypted)."""

    def __init__(self, file_obj, compress_tensors=False, *, encryption=None,
                 limit_cpu_concurrency=None):
        self._uri, self._s3, self._copy_to = _source_for_write(file_obj)
        self._encryption = encryption
        self._threads = limit_cpu_concurrency
        self._writer = _native.Writer()
        self._keep = []
        self.total_tensor_bytes = 0
        self.total_compressed_tensor_bytes = 0
        self._closed = False

    def _add(self, idx, name, tensor_type, tensor):
        if torch is not None and isinstance(tensor, torch.Tensor):
            meta = tensor.device.type == "meta"
            if not meta:
                tensor = tensor.detach().to("cpu").contiguous()
            shape = list(tensor.shape)
            dtype = _torch_name(tensor)
            ptr = 0 if meta else tensor.data_ptr()
            nbytes = 0 if meta else tensor.numel() * tensor.element_size()
        else:
            import numpy as np
            tensor = np.ascontiguousarray(tensor)
            meta, shape, dtype = False, list(tensor.shape), str(tensor.dtype)
            ptr, nbytes = tensor.ctypes.data, tensor.nbytes
        self._keep.append(tensor)
        self._writer.add(int(idx), name, int(tensor_type), dtype, shape, ptr, nbytes, meta)
        self.total_tensor_bytes += nbytes

    def write_tensor(self, idx, name, tensor_type, tensor):
        self._add(idx, name, tensor_type, tensor)

    def write_module(self, m, remove_tensors=False, *, include_non_persistent_buffers=True):
        for idx, (module_name, module) in enumerate(m.named_modules()):
            persistent = set(module.state_dict(keep_vars=True).keys()) if not include_non_persistent_buffers else None
            for name, p in module.named_parameters(recurse=False):
                self._add(idx, f"{module_name}.{name}", 0, p)
            for name, b in module.named_buffers(recurse=False):
                if persistent is not None and name not in persistent:
                    continue
                self._add(idx, f"{module_name}.{name}", 1, b)
            if remove_tensors:
                for name, _ in list(module.named_parameters(recurse=False)):
                    setattr(module, name, None)
                for name, _ in list(module.named_buffers(recurse=False)):
                    setattr(module, name, None)

    def write_state_dict(self, state_dict):
        def walk(prefix, obj):
            if isinstance(obj, dict):
                for k, v in obj.items():
                    if not isinstance(k, str):
                        raise TypeError(f"state dict keys must be str, not {type(k).__name__}")
                    yield from walk(prefix + (k,), v)
            elif isinstance(obj, (list, tuple)):
                for i, v in enumerate(obj):
                    yield from walk(prefix + (i,), v)
            else:
                yield prefix, obj
        for path, tensor in walk((), state_dict):
            name = path[0] if len(path) == 1 and isinstance(path[0], str) else list(path)
            self._add(0, name, 2, tensor)

    def close(self):
        if self._closed:
            return
        key = kdf = None
        if self._encryption is not None:
            key, kdf = self._encryption.key, self._encryption._kdf
        try:
            self._writer.write(self._uri, key=key, kdf=kdf, threads=self._threads, **self._s3)
            if self._copy_to is not None:
                with open(self._uri, "rb") as f:
                    shutil.copyfileobj(f, self._copy_to, 16 << 20)
        finally:
            if self._copy_to is not None:
                os.unlink(self._uri)
        self._keep.clear()
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.close()
        return False


def _source_for_write(file_obj):
    """(uri, s3 credentials, file object to copy the result into)."""
    from .stream_io import _Stream
    if isinstance(file_obj, _Stream):
        return file_obj.uri, file_obj.s3, None
    if isinstance(file_obj, (str, os.PathLike)):
        return os.fspath(file_obj), {}, None
    if hasattr(file_obj, "write"):
        # Written to a temporary file in parallel, then copied into the object.
        fd, tmp = tempfile.mkstemp(prefix="tensorizer_rs-", suffix=".tensors")
        os.close(fd)
        return tmp, {}, file_obj
    raise TypeError(f"cannot write to a {type(file_obj).__name__}: pass a path, a URI or a writable file object")
