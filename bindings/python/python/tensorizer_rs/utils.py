"""The helpers of `tensorizer.utils` that its users call."""

import contextlib
import resource

__all__ = ["convert_bytes", "get_mem_usage", "no_init_or_tensor"]


def convert_bytes(num, decimal=True) -> str:
    """`1234567` → `"1.2MB"` (decimal) or `"1.2MiB"`."""
    step, units = (1000.0, ["bytes", "KB", "MB", "GB", "TB", "PB"]) if decimal else \
        (1024.0, ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB"])
    for unit in units:
        if num < step or unit == units[-1]:
            return f"{num:3.1f}{unit}"
        num /= step


def get_mem_usage() -> str:
    """The process's peak resident memory, as a short string."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return f"CPU: (maxrss: {convert_bytes(peak, decimal=False)})"


@contextlib.contextmanager
def _no_init():
    import torch
    modules = (torch.nn.Linear, torch.nn.Embedding, torch.nn.LayerNorm)
    saved = [(m, m.reset_parameters) for m in modules]
    try:
        for m in modules:
            m.reset_parameters = lambda self: None
        with torch.device("meta"):
            yield
    finally:
        for m, f in saved:
            m.reset_parameters = f


def no_init_or_tensor(loading_code=None):
    """Builds modules without allocating or initialising weights (on the
    meta device): a context manager, or a wrapper around `loading_code`."""
    if loading_code is None:
        return _no_init()
    with _no_init():
        return loading_code()
