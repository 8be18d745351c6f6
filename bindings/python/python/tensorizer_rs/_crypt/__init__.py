"""`tensorizer._crypt`: whether encryption is available. It always is here:
XSalsa20-Poly1305 and Argon2id are in the Rust core (no libsodium)."""

from .._native import CryptographyError

__all__ = ("available", "CryptographyError")

available: bool = True
