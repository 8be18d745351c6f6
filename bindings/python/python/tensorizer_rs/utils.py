"""The helpers of `tensorizer.utils` that its users call."""

import contextlib
import contextvars
import resource
import threading
from typing import NamedTuple

__all__ = ["convert_bytes", "get_device", "CPUMemoryUsage", "get_mem_usage", "no_init_or_tensor"]


def get_device():
    """CUDA when torch sees a GPU, else the CPU (the library's default
    device)."""
    import torch
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _available_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) << 10
    except OSError:
        pass
    return 0


class CPUMemoryUsage(NamedTuple):
    """The process's peak resident memory (its children's included) and the
    memory available, in bytes."""

    maxrss: int
    free: int

    @classmethod
    def now(cls) -> "CPUMemoryUsage":
        maxrss = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                  + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) << 10
        return cls(maxrss, _available_bytes())

    def __str__(self):
        return "CPU: (maxrss: {:,}MiB F: {:,}MiB)".format(self.maxrss >> 20, self.free >> 20)


def convert_bytes(num, decimal=True) -> str:
    """`1234567` → `"1.2MB"` (decimal) or `"1.2MiB"`."""
    step, units = (1000.0, ["bytes", "KB", "MB", "GB", "TB", "PB"]) if decimal else \
        (1024.0, ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB"])
    for unit in units:
        if num < step or unit == units[-1]:
            return f"{num:3.1f} {unit}"
        num /= step


def get_mem_usage() -> str:
    """The process's peak resident memory and the memory available, as the
    Python library prints them (`CPU: (maxrss: 483MiB F: 22,312MiB)`)."""
    return str(CPUMemoryUsage.now())


_active = contextvars.ContextVar("tensorizer_rs.no_init", default=False)
_lock = threading.Lock()
_users = 0
_saved = None


@contextlib.contextmanager
def _no_init():
    """While active (in this context), `torch.empty` puts tensors on the
    meta device and Linear/Embedding/LayerNorm skip their initialisation,
    as the Python library's context does; re-entrant and thread-safe."""
    global _users, _saved
    import torch
    if _active.get():
        yield
        return
    with _lock:
        _users += 1
        if _users == 1:
            modules = (torch.nn.Linear, torch.nn.Embedding, torch.nn.LayerNorm)
            _saved = (torch.empty, [(m, m.reset_parameters) for m in modules])
            empty = torch.empty

            def meta_empty(*args, **kwargs):
                if _active.get():
                    kwargs["device"] = "meta"
                return empty(*args, **kwargs)

            def skip(original):
                def reset(self, *args, **kwargs):
                    if not _active.get():
                        return original(self, *args, **kwargs)
                return reset

            torch.empty = meta_empty
            for m, original in _saved[1]:
                m.reset_parameters = skip(original)
    token = _active.set(True)
    try:
        yield
    finally:
        _active.reset(token)
        with _lock:
            _users -= 1
            if _users == 0:
                torch.empty = _saved[0]
                for m, original in _saved[1]:
                    m.reset_parameters = original


def no_init_or_tensor(loading_code=None):
    """Builds modules without allocating or initialising weights (on the
    meta device): a context manager, or a wrapper around `loading_code`."""
    if loading_code is None:
        return _no_init()
    with _no_init():
        return loading_code()
