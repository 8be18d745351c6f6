"""tensorizer_rs: the tensorizer 2.12 Python API over the Rust core.

    from tensorizer_rs import TensorDeserializer, TensorSerializer
    state = dict(TensorDeserializer("s3://bucket/model.tensors"))

`tensorizer_rs.install_as_tensorizer()` registers this package under the
name `tensorizer` (and its submodules), so unmodified code that imports
tensorizer (vLLM's loader, say) runs on it.
"""

import enum
import os
import sys

from . import _native
from ._native import CryptographyError, HashMismatchError

__version__ = "2.12.1"

__all__ = [
    "TensorSerializer", "TensorDeserializer", "TensorType", "CryptographyError",
    "HashMismatchError", "EncryptionParams", "DecryptionParams", "install_as_tensorizer",
]


class TensorType(enum.IntEnum):
    PARAM = 0
    BUFFER = 1
    STATE_DICT = 2


class EncryptionParams:
    """How a TensorSerializer encrypts: a 32-byte key, random or derived
    from a passphrase with Argon2id (libsodium crypto_pwhash)."""

    class OpsLimit(enum.IntEnum):
        MIN = 1
        INTERACTIVE = 2
        MODERATE = 3
        SENSITIVE = 4

    class MemLimit(enum.IntEnum):
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


from . import stream_io, utils  # noqa: E402
from .serialization import TensorDeserializer, TensorSerializer  # noqa: E402


def install_as_tensorizer() -> None:
    """Makes `import tensorizer` (and `tensorizer.serialization`,
    `tensorizer.stream_io`, `tensorizer.utils`) load this package. Call it
    before the code that imports tensorizer. Limits: only the API listed in
    the README exists (no `torch_compat`, no `read_numpy_arrays`)."""
    from . import serialization
    me = sys.modules[__name__]
    sys.modules["tensorizer"] = me
    sys.modules["tensorizer.serialization"] = serialization
    sys.modules["tensorizer.stream_io"] = stream_io
    sys.modules["tensorizer.utils"] = utils
