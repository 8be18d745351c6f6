"""`open_stream`: the streams the serializer and deserializer accept. A
stream here names its source (path or URI and S3 credentials); the Rust
core opens it, so a stream passed to TensorDeserializer is read in
parallel ranges rather than through this object."""

import io

from . import _native

__all__ = ["open_stream"]


class _Stream(io.RawIOBase):
    def __init__(self, uri, mode, s3):
        super().__init__()
        self.uri, self.mode, self.s3 = uri, mode, s3
        self.name = uri
        self._data = None
        self._pos = 0
        self._out = bytearray() if ("w" in mode or "a" in mode) else None

    def readable(self):
        return "r" in self.mode or "+" in self.mode

    def writable(self):
        return self._out is not None

    def _bytes(self):
        if self._data is None:
            self._data = bytes(_native.read_object(self.uri, **self.s3))
        return self._data

    def read(self, size=-1):
        data = self._bytes()
        end = len(data) if size is None or size < 0 else min(len(data), self._pos + size)
        out = data[self._pos:end]
        self._pos = end
        return out

    def readinto(self, b):
        chunk = self.read(len(b))
        b[:len(chunk)] = chunk
        return len(chunk)

    def write(self, b):
        if self._out is None:
            raise io.UnsupportedOperation("not opened for writing")
        self._out += bytes(b)
        return len(b)

    def close(self):
        if self._out is not None and not self.closed:
            _native.write_object(self.uri, bytes(self._out), **self.s3)
            self._out = None
        super().close()


def open_stream(path_uri, mode="rb", s3_access_key_id=None, s3_secret_access_key=None,
                s3_endpoint=None, s3_config_path=None, buffer_size=None, force_http=None,
                *, begin=None, end=None, s3_region_name=None, s3_signature_version=None,
                certificate_handling=None):
    """A local path, http(s)://, s3:// or redis:// object, read whole or
    written whole on close (atomically)."""
    s3 = {"s3_access_key_id": s3_access_key_id, "s3_secret_access_key": s3_secret_access_key,
          "s3_endpoint": s3_endpoint}
    return _Stream(str(path_uri), mode, s3)
