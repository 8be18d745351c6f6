#!/usr/bin/env python3
"""oracle_batch.py -- many oracle_write / oracle_read jobs in one Python process.

Importing torch costs about a second, so the Rust tests send all their jobs at
once instead of starting oracle_write.py / oracle_read.py per file.

Usage (with the oracle python from setup_oracle.sh):
    oracle_batch.py JOBS.json

JOBS.json is a list of
    {"op": "write", "spec": "case.json", "out": "python.tensors"}
    {"op": "read", "file": "ours.tensors", "key_hex": null, "passphrase": null}
Prints one JSON list on stdout, one result per job, in order:
    write -> {"ok": true, "summary": {...}} | {"ok": false, "error": "..."}
    read  -> {"ok": true, "info": {...}}    | {"ok": false, "error": "..."}
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
        return {"ok": False, "error": f"unknown op {job['op']!r}"}
    except Exception as e:  # the real library refused: report, keep going
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}


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
