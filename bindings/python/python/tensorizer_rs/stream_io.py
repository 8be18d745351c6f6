"""`open_stream` and the streams of `tensorizer.stream_io`, over the Rust
core's sources and sinks.

- Reads (http(s)://, s3://, gs://, az://, redis://) fetch the byte ranges
  asked for, with a read-ahead buffer of `buffer_size` bytes: `seek` and
  `tell` work, and the object is never held in memory whole.
- Writes (s3://, gs://, az://) go into the store's atomic sink as they
  come (a multipart upload, bounded memory) and appear at the URI when the
  stream is closed; a stream closed by an exception, or never closed,
  leaves the previous object in place.
- Local paths open as Python files (`open(path, mode)`), as the library
  does.

A stream handed to `TensorDeserializer` is read by the core directly, in
parallel ranges; one handed to `TensorSerializer` receives the serializer's
bytes through its sink.
"""

import configparser
import io
import os
import sys
import time
import typing
from typing import Optional

from . import _native

__all__ = ["open_stream", "CURLStreamFile", "RedisStreamFile", "CAInfo"]

# The library's defaults when no endpoint is given or configured.
default_s3_read_endpoint = "accel-object.ord1.coreweave.com"
default_s3_write_endpoint = "object.ord1.coreweave.com"

if sys.platform != "win32":
    _s3_default_config_paths = (os.path.expanduser("~/.s3cfg"),)
else:
    _s3_default_config_paths = tuple(
        map(os.path.expanduser, (r"~\.s3cfg", r"~\AppData\Roaming\s3cmd.ini")))

_DEFAULT_BUFFER = 4 << 20
_WRITE_CHUNK = 16 << 20


class CAInfo:
    """Custom certificate verification for https:// streams (the library's
    cURL flags). Exactly one of `cacert`, `capath`, `allow_untrusted`."""

    __slots__ = ("_curl_flags", "_trust")

    def __init__(self, *, cacert=None, capath=None, allow_untrusted=False):
        if (cacert, capath).count(None) + (not allow_untrusted) != 2:
            raise ValueError(
                "Exactly one of cacert, capath, or allow_untrusted=True must be specified."
                " For default certificate verification behaviour, use"
                " certificate_handling=None instead of an explicit CAInfo instance")
        if cacert is not None:
            if not os.path.isfile(cacert):
                raise ValueError("Invalid cacert file path")
            self._curl_flags = ("--cacert", str(cacert))
            self._trust = dict(ca_file=os.fspath(cacert))
        elif capath is not None:
            if not os.path.isdir(capath):
                raise ValueError("Invalid capath directory path")
            self._curl_flags = ("--capath", str(capath))
            self._trust = dict(ca_dir=os.fspath(capath))
        else:
            self._curl_flags = ("--insecure",)
            self._trust = dict(accept_invalid_certs=True)

    @property
    def curl_flags(self):
        return self._curl_flags

    @property
    def storage_trust(self):
        """The core's keyword arguments for this handling (`_native.Storage`)."""
        return dict(self._trust)


def _trust(certificate_handling):
    """`_native.Storage` keyword arguments for a `CAInfo`, or none."""
    if certificate_handling is None:
        return {}
    if not isinstance(certificate_handling, CAInfo):
        raise TypeError("certificate_handling must be a CAInfo instance or None")
    return certificate_handling.storage_trust

    def __hash__(self):
        return hash(self._curl_flags)


def _redact(uri: str) -> str:
    """`uri` with userinfo and query replaced, for messages."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return uri
    host, slash, path = rest.partition("/")
    if "@" in host:
        host = "***@" + host.rsplit("@", 1)[1]
    if "?" in path:
        path = path.split("?", 1)[0] + "?***"
    return f"{scheme}://{host}{slash}{path}"


class _Stream(io.BufferedIOBase):
    """A seekable read stream over ranges of an object, or a write stream
    into an atomic sink."""

    def __init__(self, uri, mode="rb", storage=None, *, buffer_size=None, begin=None, end=None):
        super().__init__()
        self.uri = uri
        self.name = uri
        self.mode = mode
        self._storage = storage
        self._pos = 0
        self._source = self._sink = None
        self._buffer, self._buffer_at = b"", 0
        self._buffer_size = int(buffer_size or _DEFAULT_BUFFER)
        self._pending = bytearray()
        started = time.monotonic()
        if "w" in mode:
            self._sink = _native.Sink(uri, storage=storage)
            self._base, self._len = 0, None
        else:
            try:
                self._source = _native.Source(uri, storage=storage)
            except OSError as e:
                raise OSError(f"Failed to open stream {_redact(uri)}: {e}") from None
            size = self._source.size
            self._base = min(begin or 0, size)
            self._len = (min(end, size) if end is not None else size) - self._base
            self._len = max(self._len, 0)
        self.setup_latency = time.monotonic() - started
        self.response_latencies = []
        self.bytes_read = 0

    # -- what the core reads directly ----------------------------------
    def _direct(self):
        """(uri, storage) when the core may open the object itself: a read
        stream over the whole object, at its start."""
        if self._source is not None and self._base == 0 and self._len == self._source.size \
                and self._pos == 0:
            return self.uri, self._storage
        return None

    # -- reading ---------------------------------------------------------
    def readable(self):
        return self._source is not None

    def seekable(self):
        return self._source is not None

    def writable(self):
        return self._sink is not None

    def tell(self):
        self._check_open()
        return self._pos

    def seek(self, offset, whence=io.SEEK_SET):
        self._check_open()
        if self._source is None:
            if (offset, whence) in ((0, io.SEEK_CUR), (self._pos, io.SEEK_SET)):
                return self._pos
            raise io.UnsupportedOperation("write streams cannot seek")
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._len + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def _fetch(self, at, n):
        started = time.monotonic()
        data = self._source.read(self._base + at, n)
        self.response_latencies.append(time.monotonic() - started)
        self.bytes_read += len(data)
        return data

    def read(self, size=-1):
        self._check_open()
        if self._source is None:
            raise io.UnsupportedOperation("not opened for reading")
        left = max(self._len - self._pos, 0)
        n = left if size is None or size < 0 else min(size, left)
        if n == 0:
            return b""
        start = self._pos - self._buffer_at
        if 0 <= start and start + n <= len(self._buffer):
            out = self._buffer[start:start + n]
        elif n >= self._buffer_size:
            out = self._fetch(self._pos, n)
        else:
            self._buffer_at = self._pos
            self._buffer = self._fetch(self._pos, min(self._buffer_size, left))
            out = self._buffer[:n]
        self._pos += len(out)
        return out

    def read1(self, size=-1):
        return self.read(size)

    def readinto(self, b):
        with memoryview(b) as view, view.cast("B") as target:
            data = self.read(len(target))
            target[:len(data)] = data
        return len(data)

    def readinto1(self, b):
        return self.readinto(b)

    # -- writing ---------------------------------------------------------
    def write(self, b):
        self._check_open()
        if self._sink is None:
            raise io.UnsupportedOperation("not opened for writing")
        with memoryview(b) as view:
            n = view.nbytes
            self._pending += view.cast("B")
        if len(self._pending) >= _WRITE_CHUNK:
            self.flush()
        return n

    def flush(self):
        if self._sink is not None and self._pending:
            self._sink.write_at(self._pos, bytes(self._pending))
            self._pos += len(self._pending)
            self._pending.clear()

    def _written(self, n):
        """A serializer wrote `n` bytes through the sink at `tell()`."""
        self._pos += n

    def _check_open(self):
        if self.closed:
            raise ValueError("I/O operation on closed stream")

    def close(self):
        """Commits what was written (read streams just close)."""
        if self.closed:
            return
        try:
            if self._sink is not None:
                self.flush()
                self._sink.commit()
        finally:
            self._sink = self._source = None
            self._buffer = b""
            super().close()

    def _abort(self):
        if self._sink is not None:
            self._sink.abort()
            self._sink = None
        if not self.closed:
            super().close()

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and self._sink is not None:
            # Nothing half-written reaches the destination.
            self._abort()
            return False
        self.close()
        return False

    def __del__(self):
        # Never closed: the upload is abandoned, the destination untouched.
        try:
            if self._sink is not None:
                self._sink.abort()
        except Exception:
            pass

    def __repr__(self):
        return f"<{type(self).__name__} {_redact(self.uri)!r} mode={self.mode!r}>"


class CURLStreamFile(_Stream):
    """An http(s):// (or presigned s3) object read by ranges (the library
    drives curl; this drives the Rust core's HTTP client)."""

    def __init__(self, uri, begin=None, end=None, headers=None, *, buffer_size=None,
                 certificate_handling=None):
        _check_range(begin, end)
        if headers:
            raise ValueError("tensorizer_rs: custom request headers are not supported")
        trust = _trust(certificate_handling)
        storage = _native.Storage(**trust) if trust else None
        super().__init__(uri, "rb", storage, buffer_size=buffer_size, begin=begin, end=end)


class RedisStreamFile(_Stream):
    """A file stored in Redis (the library's key layout), read by ranges."""

    def __init__(self, uri, *, buffer_size=None, begin=None, end=None):
        _check_range(begin, end)
        super().__init__(uri, "rb", None, buffer_size=buffer_size, begin=begin, end=end)


class _ObjectStream(_Stream):
    """s3://, gs://, az:// objects."""


def _check_range(begin, end):
    if begin is not None and begin < 0:
        raise ValueError("Invalid begin: must be non-negative")
    if end is not None and end < 0:
        raise ValueError("Invalid end: must be non-negative")
    if end is not None and end <= (begin or 0):
        raise ValueError("Invalid range: end must be greater than begin")


def _ensure_https_endpoint(endpoint: str):
    """The library's check that an S3 endpoint is https (its tests replace
    it to reach a plain-http mock server)."""
    return _enforce_scheme(endpoint)


def _enforce_scheme(endpoint: str, allow_http: bool = False, force_http: bool = False):
    scheme, *location = endpoint.split("://", maxsplit=1)
    scheme = scheme.lower() if location else None
    if scheme is None:
        return ("http://" if force_http else "https://") + endpoint
    elif scheme == "https":
        return "http://" + endpoint[8:] if force_http else endpoint
    elif (force_http or allow_http) and scheme == "http":
        return endpoint
    else:
        raise ValueError("Non-HTTPS endpoint URLs are not allowed.")


class _ParsedCredentials(typing.NamedTuple):
    config_file: Optional[str]
    s3_endpoint: Optional[str]
    s3_access_key: Optional[str]
    s3_secret_key: Optional[str]
    use_https: Optional[bool]


def _get_s3cfg_values(config_paths=None) -> _ParsedCredentials:
    """Credentials and endpoint from the first s3cmd config file found."""
    if config_paths is None:
        config_paths = _s3_default_config_paths
    elif isinstance(config_paths, (str, bytes, os.PathLike)):
        config_paths = (config_paths,)
    for path in config_paths:
        path = os.fsdecode(path)
        if not os.path.exists(path):
            continue
        config = configparser.ConfigParser()
        config.read(path)
        if "default" not in config:
            raise ValueError(f"No default section in {path}")
        section = config["default"]
        use_https = section.get("use_https")
        return _ParsedCredentials(
            config_file=path, s3_endpoint=section.get("host_base"),
            s3_access_key=section.get("access_key"), s3_secret_key=section.get("secret_key"),
            use_https=None if use_https is None else use_https.strip().lower() in ("true", "1", "yes"))
    return _ParsedCredentials(None, None, None, None, None)


def _s3_storage(s3_access_key_id=None, s3_secret_access_key=None, s3_endpoint=None,
                s3_config_path=None, force_http=None, s3_region_name=None, *, upload=False,
                certificate_handling=None):
    """The core's storage options for an s3:// URI, resolved as the library
    resolves them: explicit arguments, then the s3cmd config file, then
    AWS_ENDPOINT_URL(_S3), then the library's default endpoints."""
    if s3_config_path is not None and not os.path.exists(s3_config_path):
        raise FileNotFoundError(f"Explicitly specified s3_config_path does not exist: {s3_config_path}")
    allow_http = False
    if None in (s3_access_key_id, s3_secret_access_key) or s3_endpoint is None:
        parsed = _get_s3cfg_values(s3_config_path)
        if parsed.config_file is not None:
            if s3_access_key_id is None:
                s3_access_key_id = parsed.s3_access_key
            if s3_secret_access_key is None:
                s3_secret_access_key = parsed.s3_secret_key
            s3_endpoint = s3_endpoint or parsed.s3_endpoint
            if force_http is None and parsed.use_https is not None:
                force_http = not parsed.use_https
    if not s3_endpoint:
        s3_endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        allow_http = bool(s3_endpoint)
    if not s3_endpoint:
        s3_endpoint = default_s3_write_endpoint if upload else default_s3_read_endpoint
    if allow_http or force_http:
        s3_endpoint = _enforce_scheme(s3_endpoint, allow_http, bool(force_http))
    else:
        s3_endpoint = _ensure_https_endpoint(s3_endpoint)
    return _native.Storage(
        s3_access_key_id=s3_access_key_id, s3_secret_access_key=s3_secret_access_key,
        s3_endpoint=s3_endpoint, s3_region_name=s3_region_name,
        s3_config_path=os.fsdecode(s3_config_path) if s3_config_path is not None else None,
        **_trust(certificate_handling))


def _s3_download_url(path_uri, s3_access_key_id, s3_secret_access_key,
                     s3_endpoint=default_s3_read_endpoint, s3_region_name=None,
                     s3_signature_version=None):
    """A presigned GET URL (SigV4, valid an hour, as the library's) signed by
    the core's S3 signer; with an empty access key, the unsigned URL."""
    if s3_signature_version not in (None, "s3v4", "v4"):
        raise ValueError(f"tensorizer_rs signs S3 requests with SigV4 only, not {s3_signature_version!r}")
    storage = _s3_storage(s3_access_key_id, s3_secret_access_key, s3_endpoint, None, None,
                          s3_region_name)
    return _native.s3_presigned_url(path_uri, storage=storage, expires_s=3600,
                                    anonymous=not s3_access_key_id)


def open_stream(path_uri, mode="rb", s3_access_key_id=None, s3_secret_access_key=None,
                s3_endpoint=None, s3_config_path=None, buffer_size=None, force_http=None,
                *, begin=None, end=None, s3_region_name=None, s3_signature_version=None,
                certificate_handling=None):
    """Opens a local path, an http(s)://, s3://, gs://, az:// or redis://
    object: "rb" for every kind; "wb" and "wb+" for s3://, gs:// and az://
    (written on close, atomically); every binary mode for local paths."""
    local_only = isinstance(path_uri, os.PathLike)
    path_uri = os.fspath(path_uri)
    if isinstance(path_uri, bytes):
        path_uri = os.fsdecode(path_uri)
    scheme, *location = path_uri.split("://", maxsplit=1)
    scheme = scheme.lower() if location and not local_only else None
    normalized = "".join(sorted(mode))
    if s3_signature_version not in (None, "s3v4", "v4"):
        raise ValueError(f"tensorizer_rs signs S3 requests with SigV4 only, not {s3_signature_version!r}")
    _check_range(begin, end)

    if scheme in ("http", "https"):
        if normalized != "br":
            raise ValueError('Only the mode "rb" is valid when opening http(s):// streams.')
        return CURLStreamFile(path_uri, begin=begin, end=end, buffer_size=buffer_size,
                              certificate_handling=certificate_handling)
    if scheme == "redis":
        if normalized != "br":
            raise ValueError('Only the mode "rb" is valid when opening redis:// streams.')
        return RedisStreamFile(path_uri, buffer_size=buffer_size, begin=begin, end=end)
    if scheme in ("s3", "gs", "gcs", "az", "abfs", "abfss"):
        if normalized not in ("br", "bw", "+bw"):
            raise ValueError(
                f'Only the modes "rb", "wb" and "wb+" are valid when opening {scheme}:// streams'
                ' (tensorizer_rs does not append to objects).')
        upload = "w" in mode
        storage = None
        if scheme == "s3":
            storage = _s3_storage(s3_access_key_id, s3_secret_access_key, s3_endpoint,
                                  s3_config_path, force_http, s3_region_name, upload=upload,
                                  certificate_handling=certificate_handling)
        return _ObjectStream(path_uri, "wb" if upload else "rb", storage,
                             buffer_size=buffer_size, begin=begin, end=end)
    if scheme is not None and len(scheme) > 1 and scheme != "file":
        raise ValueError(f"unsupported URI scheme {scheme}:// in {_redact(path_uri)}")
    if scheme == "file":
        path_uri = location[0]
    # Local files: Python files, as the library opens them.
    if "b" not in normalized:
        raise ValueError('Only binary modes ("rb", "wb", "wb+", etc.) are valid when opening'
                         " local file streams.")
    if any(map(normalized.__contains__, "wax")):
        dirname = os.path.dirname(path_uri)
        if dirname:
            os.makedirs(dirname, exist_ok=True)
    handle = open(path_uri, mode, buffering=buffer_size or io.DEFAULT_BUFFER_SIZE)
    handle.seek(begin or 0)
    return handle
