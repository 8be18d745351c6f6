#!/usr/bin/env python3
"""bench_distributed.py -- one row of `cargo xtask bench`'s distributed
table: WORLD ranks (spawned, gloo on loopback) load the same safetensors
file, each run between two barriers. Prints
{"gib_s": [model bytes / wall time, per run], "bytes": N, "rss_kib": the
largest rank's peak RSS}.

    bench_distributed.py URI WORLD --mode dist|all [--runs R] [--s3-endpoint E]

dist: tensorizer_rs.distributed.load_safetensors (each byte read once by
      the group, then broadcast);
all:  every rank reads the whole file itself through the same core
      (what a TP group does without a distributed load).
S3 credentials: S3_ACCESS_KEY_ID / S3_SECRET_ACCESS_KEY from the environment.
"""
import argparse
import json
import os
import resource
import socket
import tempfile
import time


def worker(rank, world, port, a, out_dir):
    import torch
    import torch.distributed as dist
    from tensorizer_rs import _native
    from tensorizer_rs.distributed import load_safetensors
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    storage = _native.Storage(s3_access_key_id=os.environ.get("S3_ACCESS_KEY_ID"),
                              s3_secret_access_key=os.environ.get("S3_SECRET_ACCESS_KEY"),
                              s3_endpoint=a.s3_endpoint) if a.s3_endpoint else None
    times, total = [], 0
    for _ in range(a.runs):
        dist.barrier()
        start = time.perf_counter()
        if a.mode == "dist" and world > 1:
            tensors = load_safetensors([a.uri], storage=storage)
            total = sum(t.numel() * t.element_size() for t in tensors.values())
        else:
            reader = _native.Reader(a.uri, storage=storage)
            capsules = reader.read(list(range(len(reader.entries()))), raw=True)
            tensors = [torch.utils.dlpack.from_dlpack(c) for c in capsules]
            total = sum(t.numel() for t in tensors)
        dist.barrier()
        times.append(time.perf_counter() - start)
        del tensors
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with open(os.path.join(out_dir, f"{rank}.json"), "w") as f:
        json.dump({"times": times, "bytes": total, "rss_kib": rss}, f)
    dist.destroy_process_group()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("uri")
    p.add_argument("world", type=int)
    p.add_argument("--mode", choices=["dist", "all"], required=True)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--s3-endpoint")
    a = p.parse_args()
    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(worker, args=(a.world, port, a, out), nprocs=a.world)
        ranks = [json.load(open(os.path.join(out, f"{r}.json"))) for r in range(a.world)]
    walls = [max(r["times"][i] for r in ranks) for i in range(a.runs)]
    size = ranks[0]["bytes"]
    print(json.dumps({"gib_s": [size / w / (1 << 30) for w in walls], "bytes": size,
                      "rss_kib": max(r["rss_kib"] for r in ranks)}))


if __name__ == "__main__":
    main()
