#!/usr/bin/env python3
"""bench_python.py -- the Python side of `cargo xtask bench`, one measurement
per process. Prints {"gib_s": [per run], "bytes": N, "rss_kib": peak RSS}.

    bench_python.py tensorizer URI [--runs R] [--num-readers N] [--key-hex K]
                    [--s3-endpoint E] [--cold] [--verify-hash]
    bench_python.py safetensors FILE [--runs R] [--cold]
    bench_python.py serialize FILE.tensors OUT.tensors [--runs R] [--fsync]

serialize also prints "write_rss_kib": the peak RSS during the writes above
the RSS once the model is loaded. --fsync: fsync the output before the clock
stops (the Python library leaves dirty pages; tensorizer_rs's local files are
fsynced before they are renamed into place).

tensorizer: TensorDeserializer(device="cpu"), default options (lazy_load=False,
verify_hash=False unless --verify-hash), the given num_readers; S3 through open_stream(force_http=True)
with S3_ACCESS_KEY_ID/S3_SECRET_ACCESS_KEY from the environment.
"""
import argparse
import json
import os
import resource
import time


def drop_cache(path):
    if os.path.exists(path):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def nbytes(tensors):
    return sum(t.element_size() * t.nelement() for t in tensors)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("what")
    p.add_argument("paths", nargs="+")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--num-readers", type=int, default=None)
    p.add_argument("--key-hex")
    p.add_argument("--s3-endpoint")
    p.add_argument("--cold", action="store_true")
    p.add_argument("--verify-hash", action="store_true")
    p.add_argument("--fsync", action="store_true")
    p.add_argument("--rs", action="store_true",
                   help="tensorizer_rs (our Python package) instead of the Python library")
    a = p.parse_args()
    lib = "tensorizer_rs" if a.rs else "tensorizer"

    import torch  # noqa: F401
    # Imports are not part of a load: done before the clock starts.
    mod = __import__(lib) if a.what == "tensorizer" else None
    rates, total, loaded, write_base = [], 0, None, None
    for _ in range(a.runs):
        if a.cold:
            drop_cache(a.paths[0])
        start = time.perf_counter()
        if a.what == "tensorizer":
            DecryptionParams, TensorDeserializer, stream_io = (
                mod.DecryptionParams, mod.TensorDeserializer, mod.stream_io)
            src = a.paths[0]
            if src.startswith("s3://"):
                src = stream_io.open_stream(
                    src, "rb", s3_access_key_id=os.environ.get("S3_ACCESS_KEY_ID"),
                    s3_secret_access_key=os.environ.get("S3_SECRET_ACCESS_KEY"),
                    s3_endpoint=a.s3_endpoint, force_http=True)
            enc = DecryptionParams.from_key(bytes.fromhex(a.key_hex)) if a.key_hex else None
            kwargs = {"num_readers": a.num_readers} if a.num_readers else {}
            if a.verify_hash:
                kwargs["verify_hash"] = True
            d = TensorDeserializer(src, device="cpu", encryption=enc, **kwargs)
            # The tensors stay referenced past close(), as a server keeps
            # its weights: freeing them is not part of a load (the CLI's
            # `load` stops its clock before it frees, too).
            loaded = list(d.values())
            total = nbytes(loaded)
            d.close()
        elif a.what == "safetensors":
            from safetensors.torch import load_file
            # load_file maps the file lazily: clone() reads every byte into
            # owned memory, as a loader must.
            total = nbytes([t.clone() for t in load_file(a.paths[0]).values()])
        elif a.what == "serialize":
            from tensorizer import TensorDeserializer
            TensorSerializer = __import__(lib).TensorSerializer
            if not rates:
                d = TensorDeserializer(a.paths[0], device="cpu")
                state = {k: v for k, v in d.items()}
                d.close()
                write_base = reset_peak_rss()
            # Remove the previous output untimed (freeing it is not the
            # writer's work); bench-load does the same.
            if os.path.exists(a.paths[1]):
                os.remove(a.paths[1])
            start = time.perf_counter()
            s = TensorSerializer(a.paths[1])
            s.write_state_dict(state)
            s.close()
            if a.fsync:
                fd = os.open(a.paths[1], os.O_RDONLY)
                os.fsync(fd)
                os.close(fd)
            total = nbytes(state.values())
        else:
            raise SystemExit(f"unknown measurement {a.what!r}")
        rates.append(total / (time.perf_counter() - start) / (1 << 30))
        loaded = None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = {"gib_s": rates, "bytes": total, "rss_kib": rss}
    if write_base is not None:
        result["write_rss_kib"] = max(0, status_kib("VmHWM:") - write_base)
    print(json.dumps(result))


def status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def reset_peak_rss():
    """Resets VmHWM to the current RSS (clear_refs 5) and returns it."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return status_kib("VmRSS:")


if __name__ == "__main__":
    main()
