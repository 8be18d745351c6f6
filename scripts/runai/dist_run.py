#!/usr/bin/env python3
"""Runs Run:ai Model Streamer's distributed test files on a gloo group of
WORLD ranks on loopback, as `torchrun --nproc-per-node WORLD pytest FILE`
would: each rank a pytest process (conftest.py initializes its group),
a test passing only if it passed on every rank.

    dist_run.py WORLD SIDE RESULTS.json FILE...
    dist_run.py --prepare        # only generate test_files/ (before any run)

SIDE and the per-test outcome files follow conftest.py. The files the
safetensors tests read (`test_files/`, which the wheel does not ship) are
generated once next to them (the plain safetensors tests read them too). Prints nothing but what pytest prints."""

import json
import os
import socket
import subprocess
import sys
import time

# Long enough for the slowest test, short enough that a hung rank ends the run.
RUN_TIMEOUT_S = 600


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_test_files(tests):
    out = os.path.join(tests, "safetensors_streamer", "test_files")
    if os.path.exists(os.path.join(out, "test_empty.safetensors")):
        return
    import torch
    from safetensors.torch import save_file
    os.makedirs(out, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.int64, torch.bool):
        name = str(dtype).split(".")[1]
        t = torch.randn(33, 17, generator=g)
        tensors[f"tensor1.{name}"] = (t > 0) if dtype == torch.bool else (t * 100).to(dtype)
        tensors[f"tensor2.{name}"] = tensors[f"tensor1.{name}"][:5].clone()
    save_file(tensors, os.path.join(out, "test.safetensors"))
    save_file({}, os.path.join(out, "test_empty.safetensors"))


def main():
    if sys.argv[1:] == ["--prepare"]:
        # Before any run: the plain tests read these files too.
        ensure_test_files(os.getcwd())
        return
    world, side, results, files = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]
    tests = os.getcwd()
    ensure_test_files(tests)
    port = free_port()
    procs = []
    for rank in range(world):
        env = dict(os.environ, RUNAI_TEST_SIDE=side, RUNAI_TEST_DIST_RANK=str(rank),
                   RUNAI_TEST_DIST_WORLD=str(world), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), RUNAI_TEST_RESULTS=f"{results}.rank{rank}")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             "--import-mode=importlib", "-o", "console_output_style=classic", *files],
            env=env, stdout=None if rank == 0 else subprocess.DEVNULL,
            stderr=None if rank == 0 else subprocess.DEVNULL))
    deadline = time.monotonic() + RUN_TIMEOUT_S
    for p in procs:
        try:
            p.wait(timeout=max(1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            print(f"dist_run: ranks still running after {RUN_TIMEOUT_S} s: killed", file=sys.stderr)
    per_rank, why = [], {}
    for rank in range(world):
        try:
            with open(f"{results}.rank{rank}") as f:
                got = json.load(f)
        except (OSError, ValueError):
            got = {}
        for name, w in got.pop("__why__", {}).items():
            why.setdefault(name, f"rank {rank}: {w}")
        per_rank.append(got)
    merged = {}
    for name in sorted(set().union(*per_rank)):
        outcomes = [got.get(name, "failed") for got in per_rank]
        merged[name] = next((o for o in outcomes if o != "passed"), "passed")
        if "failed" in outcomes and name not in why:
            why[name] = f"no outcome on rank {outcomes.index('failed')} (it died or hung)"
    merged["__why__"] = why
    with open(results, "w") as f:
        json.dump(merged, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
