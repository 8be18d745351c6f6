"""tensorizer_rs: the tensorizer 2.12 Python API over the Rust core.

    from tensorizer_rs import TensorDeserializer, TensorSerializer
    state = dict(TensorDeserializer("s3://bucket/model.tensors"))

`tensorizer_rs.install_as_tensorizer()` registers this package under the
name `tensorizer` (and its submodules), so unmodified code that imports
tensorizer (vLLM's loader, say) runs on it.
"""

import sys

from . import _native  # noqa: F401
from ._native import CryptographyError, HashMismatchError

__version__ = "2.12.1"

__all__ = [
    "TensorSerializer", "TensorDeserializer", "TensorType", "CryptographyError",
    "HashMismatchError", "EncryptionParams", "DecryptionParams", "FilterFuncType",
    "install_as_tensorizer", "stream_io", "torch_compat", "utils",
]

from . import _alias, stream_io, utils  # noqa: E402
from .serialization import (  # noqa: E402
    DecryptionParams,
    EncryptionParams,
    FilterFuncType,
    TensorDeserializer,
    TensorSerializer,
    TensorType,
)


def __getattr__(name):
    # torch_compat needs torch: imported when first asked for.
    if name == "torch_compat":
        from . import torch_compat
        return torch_compat
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def install_as_tensorizer() -> None:
    """Makes `import tensorizer` and every `tensorizer.<submodule>` load
    this package (the same module objects under both names). Call it before
    the code that imports tensorizer, or set TENSORIZER_RS=1 in the
    environment to have the wheel's .pth hook do it at interpreter start.
    A real tensorizer imported earlier is replaced in sys.modules."""
    for name in [n for n in sys.modules if n == "tensorizer" or n.startswith("tensorizer.")]:
        del sys.modules[name]
    _alias.install()
    import tensorizer  # noqa: F401  (registers the alias now)
