#!/usr/bin/env python3
"""bench_safetensors.py -- safetensors loaders for `cargo xtask bench`, one
measurement per process, in the torch 2 venv (scripts/runai/setup.sh).
Prints {"gib_s": [per run], "bytes": N, "rss_kib": peak RSS}.

    bench_safetensors.py runai URI [--rs] [--runs R] [--cold] [--drop]
        Run:ai Model Streamer 0.17.0's SafetensorsStreamer (or, with --rs,
        tensorizer_rs's runai_model_streamer): stream_file, then every
        tensor of get_tensors() kept, as a server keeps its weights.
        s3:// URIs use AWS_ENDPOINT_URL and the AWS_* credentials. With
        --drop each tensor is counted and dropped (a consumer that copies
        it to a GPU): peak RSS then shows what the streamer itself holds
        under RUNAI_STREAMER_MEMORY_LIMIT.
    bench_safetensors.py baseline      # peak RSS with torch and the packages imported, nothing loaded
    bench_safetensors.py load_file FILE [--backend mmap|pread] [--runs R] [--cold]
        safetensors 0.8's load_file; mmap tensors are cloned, so that
        every byte is read into memory the caller owns.
"""
import argparse
import json
import os
import resource
import time


from bench_python import drop_cache  # noqa: E402  (beside this script)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["runai", "load_file", "baseline"])
    p.add_argument("uri", nargs="?")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--cold", action="store_true")
    p.add_argument("--rs", action="store_true")
    p.add_argument("--backend", default="mmap")
    p.add_argument("--drop", action="store_true")
    a = p.parse_args()
    import torch  # noqa: F401  (imports are not part of a load)
    if a.what == "baseline":
        # What the interpreter holds before any load: both packages imported.
        import runai_model_streamer  # noqa: F401
        import tensorizer_rs.runai_model_streamer  # noqa: F401
        import safetensors.torch  # noqa: F401
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"gib_s": [0.0], "bytes": 0, "rss_kib": rss}))
        return
    if a.what == "runai":
        if a.rs:
            from tensorizer_rs.runai_model_streamer import SafetensorsStreamer
        else:
            from runai_model_streamer import SafetensorsStreamer
    else:
        from safetensors.torch import load_file
    rates, total = [], 0
    for _ in range(a.runs):
        if a.cold:
            drop_cache(a.uri)
        start = time.perf_counter()
        if a.what == "runai":
            with SafetensorsStreamer() as s:
                s.stream_file(a.uri)
                if a.drop:
                    dropped = 0
                    for _, t in s.get_tensors():
                        dropped += t.element_size() * t.nelement()
                        del t  # before the next one is asked for
                    kept = [torch.empty(dropped, dtype=torch.uint8, device="meta")]
                else:
                    kept = [t for _, t in s.get_tensors()]
        else:
            loaded = load_file(a.uri, backend=a.backend)
            kept = [t.clone() for t in loaded.values()] if a.backend == "mmap" else list(loaded.values())
        rates.append(sum(t.element_size() * t.nelement() for t in kept)
                     / (time.perf_counter() - start) / (1 << 30))
        total = sum(t.element_size() * t.nelement() for t in kept)
        kept = None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"gib_s": rates, "bytes": total, "rss_kib": rss}))


if __name__ == "__main__":
    main()
