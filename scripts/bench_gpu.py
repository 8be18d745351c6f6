#!/usr/bin/env python3
"""bench_gpu.py -- safetensors + torch loading the same model onto GPU 0, for
`cargo xtask gpu-bench`. Prints {"gib_s": [per run], "bytes": N}.

    bench_gpu.py MODEL.safetensors [--runs R]
"""
import json
import sys
import time


def main():
    import torch
    from safetensors.torch import load_file
    path = sys.argv[1]
    runs = int(sys.argv[sys.argv.index("--runs") + 1]) if "--runs" in sys.argv else 3
    rates, total = [], 0
    for _ in range(runs):
        torch.cuda.synchronize()
        start = time.perf_counter()
        tensors = load_file(path, device="cuda:0")
        torch.cuda.synchronize()
        total = sum(t.element_size() * t.nelement() for t in tensors.values())
        rates.append(total / (time.perf_counter() - start) / (1 << 30))
        del tensors
    print(json.dumps({"gib_s": rates, "bytes": total}))


if __name__ == "__main__":
    main()
