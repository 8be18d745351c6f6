"""Object-store paths and S3 credentials, as Run:ai's package names them,
and the storage options of the Rust core they become."""

import os
from typing import List, Optional

GCS_PROTOCOL_PREFIX = "gs://"
S3_PROTOCOL_PREFIX = "s3://"
AZURE_PROTOCOL_PREFIX = "az://"
DEFAULT_GCS_ENDPOINT_URL = "https://storage.googleapis.com"
AWS_ENDPOINT_URL_ENV = "AWS_ENDPOINT_URL"
AWS_EC2_METADATA_DISABLED_ENV = "AWS_EC2_METADATA_DISABLED"
DEFAULT_AWS_EC2_METADATA_DISABLED = "true"
S3_VIRTUAL_ADDRESSING_ENV = "RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING"
S3_ENDPOINT_ENV = "RUNAI_STREAMER_S3_ENDPOINT"


class S3Credentials:
    """Explicit S3 credentials; unset fields are looked up in the
    environment (AWS_ACCESS_KEY_ID, ..., AWS_ENDPOINT_URL) and in
    ~/.aws/credentials by the core."""

    def __init__(self, access_key_id: Optional[str] = None,
                 secret_access_key: Optional[str] = None,
                 session_token: Optional[str] = None,
                 region_name: Optional[str] = None,
                 endpoint: Optional[str] = None):
        self.access_key_id = access_key_id
        self.secret_access_key = secret_access_key
        self.session_token = session_token
        self.region_name = region_name
        self.endpoint = endpoint

    def __repr__(self):
        # Secrets are never shown.
        return (f"S3Credentials(access_key_id={'<set>' if self.access_key_id else None}, "
                f"secret_access_key={'<redacted>' if self.secret_access_key else None}, "
                f"region_name={self.region_name!r}, endpoint={self.endpoint!r})")


def is_s3_path(path: str) -> bool:
    return path.startswith(S3_PROTOCOL_PREFIX)


def is_gs_path(path: str) -> bool:
    return path.startswith(GCS_PROTOCOL_PREFIX)


def is_azure_path(path: str) -> bool:
    return path.startswith(AZURE_PROTOCOL_PREFIX)


def is_object_storage_path(path: str) -> bool:
    return is_s3_path(path) or is_gs_path(path) or is_azure_path(path)


def storage(s3_credentials: Optional[S3Credentials] = None):
    """The core's storage options for these credentials and Run:ai's
    environment variables (RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING)."""
    from tensorizer_rs import _native
    c = s3_credentials or S3Credentials()
    addressing = None
    virtual = os.environ.get(S3_VIRTUAL_ADDRESSING_ENV)
    if virtual is not None:
        addressing = "virtual" if virtual.strip().lower() in ("1", "true", "yes") else "path"
    # Run:ai's own endpoint variable first (vLLM sets it from
    # AWS_ENDPOINT_URL), then what the core looks up itself.
    endpoint = c.endpoint or os.environ.get("RUNAI_STREAMER_S3_ENDPOINT") or None
    return _native.Storage(
        s3_access_key_id=c.access_key_id, s3_secret_access_key=c.secret_access_key,
        s3_session_token=c.session_token, s3_region_name=c.region_name,
        s3_endpoint=endpoint, s3_addressing=addressing)


def _glob(path: str, allow_pattern: Optional[List[str]], credentials, recursive: bool):
    import fnmatch
    from tensorizer_rs import _native
    base = path.rstrip("/")
    names = _native.list_objects(base + "/", storage=storage(credentials), recursive=recursive)
    patterns = allow_pattern or ["*"]
    return [f"{base}/{name}" for name, _ in names
            if any(fnmatch.fnmatch(name, p) for p in patterns)]


def s3_glob(path: str, allow_pattern: Optional[List[str]] = None,
            s3_credentials: Optional[S3Credentials] = None) -> List[str]:
    return _glob(path, allow_pattern, s3_credentials, recursive=False)


def gcs_glob(path: str, allow_pattern: Optional[List[str]] = None) -> List[str]:
    return _glob(path, allow_pattern, None, recursive=False)


def azure_glob(path: str, allow_pattern: Optional[List[str]] = None) -> List[str]:
    return _glob(path, allow_pattern, None, recursive=False)


def _pull_files(model_path: str, dst: str, allow_pattern, ignore_pattern, credentials) -> None:
    """Every object under `model_path` (recursively) whose name relative
    to it matches `allow_pattern` (all, when None) and no `ignore_pattern`,
    downloaded to the same relative path under `dst`, each file whole or
    not at all. Names that would leave `dst` are refused."""
    import fnmatch
    from tensorizer_rs import _native
    opts = storage(credentials)
    base = model_path.rstrip("/")
    root = os.path.realpath(dst)
    for name, _ in _native.list_objects(base + "/", storage=opts, recursive=True):
        if allow_pattern and not any(fnmatch.fnmatch(name, p) for p in allow_pattern):
            continue
        if ignore_pattern and any(fnmatch.fnmatch(name, p) for p in ignore_pattern):
            continue
        target = os.path.realpath(os.path.join(root, name))
        if os.path.commonpath([root, target]) != root:
            raise ValueError(f"object {name!r} under {base} would be written outside {dst!r}")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        _native.download(f"{base}/{name}", target, storage=opts)


def s3_pull_files(model_path, dst, allow_pattern=None, ignore_pattern=None, s3_credentials=None):
    return _pull_files(model_path, dst, allow_pattern, ignore_pattern, s3_credentials)


def gcs_pull_files(model_path, dst, allow_pattern=None, ignore_pattern=None):
    return _pull_files(model_path, dst, allow_pattern, ignore_pattern, None)


def azure_pull_files(model_path, dst, allow_pattern=None, ignore_pattern=None):
    return _pull_files(model_path, dst, allow_pattern, ignore_pattern, None)
