#!/usr/bin/env python3
"""vllm_rope.py -- the rotary `cos_sin_cache` computed with torch as vLLM
computes it when it builds a model (vLLM layers/rotary_embedding/base.py
`RotaryEmbedding._compute_inv_freq` / `_compute_cos_sin_cache`, and
llama3_rope.py `Llama3RotaryEmbedding._compute_inv_freq`), so the Rust
tests can compare our cache with torch's.

Usage (with the oracle python from setup_oracle.sh):
    vllm_rope.py SPEC.json OUT_F32 OUT_CAST
SPEC.json: {"theta": 10000.0, "rotary_dim": 16, "max_position": 64,
            "dtype": "bfloat16", "llama3": null | {"factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192}}
Writes the float32 cache and the cache cast to `dtype`, raw little-endian.
"""
import json
import math
import sys

import torch


def inv_freq(spec):
    base, dim = spec["theta"], spec["rotary_dim"]
    inv = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
    s = spec.get("llama3")
    if not s:
        return inv
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    orig = s["original_max_position_embeddings"]
    low_freq_wavelen = orig / low
    high_freq_wavelen = orig / high
    wave_len = 2 * math.pi / inv
    if low != high:
        smooth = (orig / wave_len - low) / (high - low)
    else:
        smooth = 0
    return torch.where(
        wave_len < high_freq_wavelen,
        inv,
        torch.where(wave_len > low_freq_wavelen, inv / factor,
                    (1 - smooth) * inv / factor + smooth * inv))


def main():
    spec = json.load(open(sys.argv[1]))
    t = torch.arange(spec["max_position"], dtype=torch.float)
    freqs = torch.einsum("i,j -> ij", t, inv_freq(spec))
    cache = torch.cat((freqs.cos(), freqs.sin()), dim=-1)
    open(sys.argv[2], "wb").write(cache.contiguous().view(torch.uint8).numpy().tobytes())
    cast = cache.to(getattr(torch, spec["dtype"]))
    open(sys.argv[3], "wb").write(cast.contiguous().view(torch.uint8).numpy().tobytes())


if __name__ == "__main__":
    main()
