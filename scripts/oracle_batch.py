#!/usr/bin/env python3
"""oracle_batch.py -- many oracle_write / oracle_read jobs in one Python process.

Importing torch costs about a second, so the Rust tests send all their jobs at
once instead of starting oracle_write.py / oracle_read.py per file.

Usage (with the oracle python from setup_oracle.sh):
    oracle_batch.py JOBS.json

JOBS.json is a list of
    {"op": "write", "spec": "case.json", "out": "python.tensors"}
    {"op": "read", "file": "ours.tensors", "key_hex": null, "passphrase": null}
    {"op": "read_uri", "uri": "s3://b/k" | "redis://h:p/prefix", "key_hex": null,
     "s3": {"access_key": "...", "secret_key": "...", "endpoint": "http://..."}}
    {"op": "to_redis", "file": "x.tensors", "uri": "redis://h:p/prefix", "key_hex": null}
Prints one JSON list on stdout, one result per job, in order:
    write -> {"ok": true, "summary": {...}} | {"ok": false, "error": "..."}
    read  -> {"ok": true, "info": {...}}    | {"ok": false, "error": "..."}
    read_uri -> {"ok": true, "tensors": [{"name_hex", "sha256", "nbytes"}...]}
    to_redis -> {"ok": true}
Exit 0 unless the job list itself is unreadable (2).
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import oracle_read  # noqa: E402
import oracle_write  # noqa: E402


def run(job):
    try:
        if job["op"] == "write":
            with open(job["spec"], "r", encoding="utf-8") as f:
                spec = json.load(f)
            base = os.path.dirname(os.path.abspath(job["spec"]))
            return {"ok": True, "summary": oracle_write.write_from_spec(spec, job["out"], base)}
        if job["op"] == "read":
            key = bytes.fromhex(job["key_hex"]) if job.get("key_hex") else None
            pw = job["passphrase"].encode("utf-8") if job.get("passphrase") else None
            return {"ok": True, "info": oracle_read.read_tensorizer_file(job["file"], key=key, passphrase=pw)}
        if job["op"] == "read_uri":
            return {"ok": True, "tensors": read_uri(job)}
        if job["op"] == "to_redis":
            to_redis(job)
            return {"ok": True}
        return {"ok": False, "error": f"unknown op {job['op']!r}"}
    except Exception as e:  # the real library refused: report, keep going
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}


def _decryption(job):
    from tensorizer import DecryptionParams
    if job.get("key_hex"):
        return DecryptionParams.from_key(bytes.fromhex(job["key_hex"]))
    return None


def read_uri(job):
    """Reads a file from S3 or Redis the way users do: open_stream + TensorDeserializer."""
    from tensorizer import TensorDeserializer, stream_io
    uri = job["uri"]
    if uri.startswith("s3://"):
        s3 = job["s3"]
        source = stream_io.open_stream(
            uri, "rb", s3_access_key_id=s3["access_key"], s3_secret_access_key=s3["secret_key"],
            s3_endpoint=s3["endpoint"], force_http=True)
    else:
        source = uri
    d = TensorDeserializer(source, device="cpu", verify_hash=True, lazy_load=True,
                           encryption=_decryption(job))
    try:
        out = []
        for _module_idx, _tensor_type, name, t in d.read_tensors(verify_hash=True):
            rec = {"name_hex": oracle_read.serialized_name(name).hex()}
            rec.update(oracle_read.tensor_record(t))
            out.append(rec)
        return out
    finally:
        d.close()


def to_redis(job):
    """The Python library's own upload: TensorDeserializer(lazy_load=True).to_redis."""
    import redis
    from urllib.parse import urlparse
    from tensorizer import TensorDeserializer
    u = urlparse(job["uri"])
    d = TensorDeserializer(job["file"], device="cpu", lazy_load=True, encryption=_decryption(job))
    try:
        d.to_redis(redis.Redis(host=u.hostname, port=u.port or 6379, db=0), u.path.lstrip("/"))
    finally:
        d.close()


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        with open(sys.argv[1], "r", encoding="utf-8") as f:
            jobs = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        print(f"oracle_batch: cannot read jobs: {e}", file=sys.stderr)
        return 2
    json.dump([run(j) for j in jobs], sys.stdout, ensure_ascii=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
