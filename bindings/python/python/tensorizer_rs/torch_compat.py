"""`tensorizer.torch_compat`: `torch.save` and `torch.load` with tensor data
in a sidecar `.tensors` file.

    with tensorizer_saving():
        torch.save(module, "module.pt")      # writes module.pt and module.pt.tensors
    with tensorizer_loading(device="cpu"):
        module = torch.load("module.pt", weights_only=False)

The `.pt` file is torch's own pickle, except that each tensor storage with
data is stored as the persistent id `("TensorizerPickler", 0, "storage",
index, dtype)`, and the storages themselves go, as flat uint8 tensors in
that order, into a list state dict in the sidecar file: the library's
layout, so either side reads what the other wrote.

Both context managers are thread- and async-safe: they patch `torch.save`
and `torch.load` once, and the patched functions act only where a context
is active (a ContextVar), behaving as torch's own everywhere else.
"""

import contextlib
import functools
import inspect
import io
import logging
import os
import pickle
import threading
import types
import typing
from contextvars import ContextVar
from typing import Any, Callable, Optional

import torch

from .serialization import TensorDeserializer, TensorSerializer

__all__ = ("tensorizer_saving", "tensorizer_loading")

logger = logging.getLogger(__name__)

_FileLike = typing.Union[str, os.PathLike, typing.IO[bytes]]

_PID_TAG = "TensorizerPickler"
_PID_VERSION = 0


class _Context:
    """What one `tensorizer_saving` or `tensorizer_loading` block set."""

    __slots__ = ("file_obj", "kwargs", "func", "suppress_weights_only")

    def __init__(self, file_obj, kwargs, func, suppress_weights_only=False):
        self.file_obj = file_obj
        self.kwargs = kwargs
        self.func = func
        self.suppress_weights_only = suppress_weights_only


_saving: ContextVar[Optional[_Context]] = ContextVar("tensorizer_saving", default=None)
_loading: ContextVar[Optional[_Context]] = ContextVar("tensorizer_loading", default=None)
# The sidecar of the save or load under way in this context.
_sidecar: ContextVar[Optional[Any]] = ContextVar("tensorizer_sidecar", default=None)


def _storage_tensor(storage) -> torch.Tensor:
    """A flat uint8 tensor over the whole storage."""
    if not isinstance(storage, torch.UntypedStorage):
        untyped = getattr(storage, "_untyped_storage", None)
        storage = untyped if untyped is not None else storage.untyped()
    t = torch.empty((0,), dtype=torch.uint8, device=storage.device)
    t.set_(storage)
    return t


def _has_data(storage) -> bool:
    untyped = getattr(storage, "_untyped_storage", storage)
    return untyped.device.type != "meta" and untyped.data_ptr() != 0


class _TensorizerPickler(pickle.Pickler):
    """Pickles storages as references into the sidecar file, written when
    the dump ends."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._tz_target = _sidecar.get()
        self._tz_tensors = []
        self._tz_ids = {}

    def _tz_register(self, tensor):
        key = (tensor.data_ptr(), tensor.dtype, tensor.shape, tensor.layout, tensor.stride())
        idx = self._tz_ids.setdefault(key, len(self._tz_tensors))
        if idx == len(self._tz_tensors):
            self._tz_tensors.append(tensor)
        else:
            self._tz_tensors[idx] = tensor
        return idx

    def persistent_id(self, obj):
        if self._tz_target is not None and torch.is_storage(obj) and _has_data(obj):
            idx = self._tz_register(_storage_tensor(obj))
            return _PID_TAG, _PID_VERSION, "storage", idx, getattr(obj, "dtype", None)
        return None

    def dump(self, obj):
        super().dump(obj)
        tensors, self._tz_tensors = self._tz_tensors, []
        self._tz_ids = {}
        if not tensors or self._tz_target is None:
            return
        context = _saving.get()
        kwargs = dict(context.kwargs) if context is not None else {}
        save_func = context.func if context is not None else None
        if save_func is not None:
            save_func(self._tz_target, tensors, kwargs)
        else:
            serializer = TensorSerializer(self._tz_target, **kwargs)
            serializer.write_state_dict(tensors)
            serializer.close()

    def __setattr__(self, key, value):
        # Older torch assigns persistent_id on the instance for its own
        # storages: ours answer first, torch's handle the rest.
        if key == "persistent_id":
            theirs = value

            def chained(obj):
                pid = _TensorizerPickler.persistent_id(self, obj)
                return pid if pid is not None else theirs(obj)

            value = chained
        super().__setattr__(key, value)

    def __init_subclass__(cls, **kwargs):
        # Newer torch subclasses the Pickler with its own persistent_id:
        # same chaining.
        super().__init_subclass__(**kwargs)
        theirs = cls.__dict__.get("persistent_id")
        if theirs is not None:
            @functools.wraps(theirs)
            def persistent_id(self, obj):
                pid = _TensorizerPickler.persistent_id(self, obj)
                return pid if pid is not None else theirs(self, obj)

            cls.persistent_id = persistent_id


class _TensorizerUnpickler(pickle.Unpickler):
    """Resolves sidecar references, loading the sidecar file the first time
    one is met (a `.pt` without them never touches it)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._tz_source = _sidecar.get()
        self._tz_tensors = None

    def load(self):
        try:
            return super().load()
        finally:
            self._tz_tensors = None

    def _tz_storage(self, idx, dtype):
        if self._tz_tensors is None:
            if self._tz_source is None:
                raise RuntimeError("Tried to load tensors without a path")
            context = _loading.get()
            kwargs = dict(context.kwargs) if context is not None else {}
            load_func = context.func if context is not None else None
            if load_func is not None:
                self._tz_tensors = list(load_func(self._tz_source, kwargs))
            else:
                with TensorDeserializer(self._tz_source, **kwargs) as deserializer:
                    self._tz_tensors = deserializer.tree()
        tensor = self._tz_tensors[idx]
        # torch reads a storage pickled untyped as a uint8 TypedStorage.
        return torch.TypedStorage(wrap_storage=tensor.untyped_storage(),
                                  dtype=dtype if dtype is not None else torch.uint8,
                                  _internal=True)

    def _tz_load(self, pid):
        if self._tz_source is not None and isinstance(pid, tuple) and len(pid) >= 3 \
                and pid[0] == _PID_TAG:
            if pid[1] > _PID_VERSION:
                raise pickle.UnpicklingError(
                    f"Unsupported TensorizerPickler data version ({pid[1]:d})")
            if pid[2] != "storage":
                raise pickle.UnpicklingError(
                    f"Unsupported TensorizerPickler object type ({pid[2]})")
            idx, dtype = pid[3:]
            return self._tz_storage(idx, dtype)
        return None

    def persistent_load(self, pid):
        found = self._tz_load(pid)
        if found is not None:
            return found
        raise pickle.UnpicklingError("unsupported persistent id encountered")

    def __setattr__(self, key, value):
        # torch.load assigns persistent_load on the instance: sidecar
        # references are ours, everything else goes to torch's.
        if key == "persistent_load":
            theirs = value

            def chained(pid, _theirs=theirs):
                found = self._tz_load(pid)
                return found if found is not None else _theirs(pid)

            value = chained
            if inspect.isgetsetdescriptor(pickle.Unpickler.persistent_load):
                # The C unpickler caches the function behind a descriptor
                # that a class attribute of ours would shadow.
                pickle.Unpickler.persistent_load.__set__(self, value)
        super().__setattr__(key, value)

    def __init_subclass__(cls, **kwargs):
        # Newer torch subclasses the Unpickler with its own
        # persistent_load: sidecar references first, then torch's.
        super().__init_subclass__(**kwargs)
        theirs = cls.__dict__.get("persistent_load")
        if theirs is not None:
            @functools.wraps(theirs)
            def persistent_load(self, pid):
                found = self._tz_load(pid)
                return found if found is not None else theirs(self, pid)

            cls.persistent_load = persistent_load


_tensorizer_pickle = types.ModuleType("tensorizer_pickle")
_tensorizer_pickle.__getattr__ = lambda name: getattr(pickle, name)
_tensorizer_pickle.Pickler = _TensorizerPickler
_tensorizer_pickle.Unpickler = _TensorizerUnpickler

_ORIG_TORCH_SAVE = torch.save
_ORIG_TORCH_LOAD = torch.load

# torch.load's default pickle_module became None in torch 1.13.
_LOAD_WRAPPER_DEFAULT_MODULE: Any = pickle if torch.__version__ < (1, 13, 0) else None


def _default_sidecar(f):
    """`f` + ".tensors", or None (no sidecar) for an in-memory buffer."""
    if isinstance(f, io.BytesIO):
        logger.warning("Cannot infer .tensors location from io.BytesIO; not using tensorizer"
                       " backend (set the file_obj parameter to choose a location instead)")
        return None
    try:
        name = os.fsdecode(f)
    except TypeError:
        if not hasattr(f, "name"):
            raise
        name = os.fsdecode(f.name)
    return name + ".tensors"


@contextlib.contextmanager
def _sidecar_for(f, context):
    spec = context.file_obj
    if spec is None:
        target = _default_sidecar(f)
    elif callable(spec):
        target = spec(f)
    else:
        target = spec
    token = _sidecar.set(target)
    try:
        yield
    finally:
        _sidecar.reset(token)


def _check_pickle_module(pickle_module):
    if pickle_module is not None and pickle_module is not pickle:
        raise ValueError("Tensorizer-based torch serialization is incompatible with using a"
                         " pickle_module other than the default")


@functools.wraps(_ORIG_TORCH_SAVE)
def _save_wrapper(obj, f, pickle_module=pickle, *args, **kwargs):
    context = _saving.get()
    if context is None:
        return _ORIG_TORCH_SAVE(obj, f, pickle_module, *args, **kwargs)
    _check_pickle_module(pickle_module)
    with _sidecar_for(f, context):
        return _ORIG_TORCH_SAVE(obj, f, *args, pickle_module=_tensorizer_pickle, **kwargs)


@functools.wraps(_ORIG_TORCH_LOAD)
def _load_wrapper(f, map_location=None, pickle_module=_LOAD_WRAPPER_DEFAULT_MODULE, *args,
                  weights_only=None, **kwargs):
    context = _loading.get()
    if context is None:
        return _ORIG_TORCH_LOAD(f, map_location, pickle_module, *args,
                                weights_only=weights_only, **kwargs)
    _check_pickle_module(pickle_module)
    if context.suppress_weights_only:
        weights_only = False
    with _sidecar_for(f, context):
        return _ORIG_TORCH_LOAD(f, map_location, *args, pickle_module=_tensorizer_pickle,
                                weights_only=weights_only, **kwargs)


class _Patch:
    """Keeps `torch.<name>` replaced while at least one context of any
    thread needs it."""

    def __init__(self, name, wrapper):
        self.name, self.wrapper = name, wrapper
        self.users = 0
        self.original = None
        self.lock = threading.Lock()

    def __enter__(self):
        with self.lock:
            self.users += 1
            if self.users == 1:
                self.original = getattr(torch, self.name)
                setattr(torch, self.name, self.wrapper)

    def __exit__(self, *exc):
        with self.lock:
            self.users -= 1
            if self.users == 0:
                setattr(torch, self.name, self.original)
                self.original = None


_save_patch = _Patch("save", _save_wrapper)
_load_patch = _Patch("load", _load_wrapper)


@contextlib.contextmanager
def tensorizer_saving(file_obj=None, *, save_func: Optional[Callable] = None, **kwargs):
    """`torch.save` inside this block writes tensor data to a sidecar file:
    `file_obj` (anything a TensorSerializer takes, or a callable mapping
    torch.save's `f` to one; default: `f` + ".tensors"). `save_func(file_obj,
    tensors, kwargs)` replaces the TensorSerializer; other keyword arguments
    go to the TensorSerializer."""
    token = _saving.set(_Context(file_obj, kwargs, save_func))
    try:
        with _save_patch:
            yield
    finally:
        _saving.reset(token)


@contextlib.contextmanager
def tensorizer_loading(file_obj=None, *, load_func: Optional[Callable] = None,
                       suppress_weights_only: bool = False, **kwargs):
    """`torch.load` inside this block reads tensor data from the sidecar
    file that `tensorizer_saving` wrote (`file_obj` as there).
    `load_func(file_obj, kwargs)` replaces the TensorDeserializer;
    `suppress_weights_only` turns `weights_only=True` into False (torch
    refuses weights-only loads with a custom unpickler); other keyword
    arguments go to the TensorDeserializer."""
    token = _loading.set(_Context(file_obj, kwargs, load_func, suppress_weights_only))
    try:
        with _load_patch:
            yield
    finally:
        _loading.reset(token)
