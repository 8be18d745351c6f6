#!/usr/bin/env python3
"""vllm_reference.py -- what vLLM itself would write with `serialize_vllm_model`
for a checkpoint at a tensor-parallel size, without a GPU: each rank's model
class is built by vLLM on the CPU (gloo process group, one process per rank),
its weights loaded by vLLM's own weight loaders from the checkpoint, the
marker registered, and every tensor `TensorSerializer.write_module` would
write listed with its module index, type, dtype, shape and SHA-256.

Usage (python of a venv with vllm, e.g. from `cargo xtask vllm-reference`):
    vllm_reference.py MODEL_DIR TP OUT.json
OUT.json: one {"tensors": [row...], "modules": [[name, class]...]} per rank,
a row being {"name", "module_idx", "type": "PARAM"|"BUFFER", "dtype",
"shape", "sha256"} in write order.
"""
import hashlib
import json
import os
import sys
import tempfile

import torch
import torch.multiprocessing as mp


def use_cpu_platform():
    # The PyPI wheel is a CUDA build; without a GPU vLLM finds no platform.
    import vllm.platforms as platforms
    from vllm.platforms.cpu import CpuPlatform
    platforms._current_platform = CpuPlatform()


def rank_rows(rank, tp, model_dir, port, out_dir):
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    use_cpu_platform()
    from torch import nn
    from vllm.config import set_current_vllm_config
    from vllm.distributed import (init_distributed_environment,
                                  initialize_model_parallel)
    from vllm.engine.arg_utils import EngineArgs
    from vllm.model_executor.model_loader.utils import initialize_model
    from vllm.model_executor.model_loader.weight_utils import \
        safetensors_weights_iterator

    engine_args = EngineArgs(model=model_dir, tensor_parallel_size=tp,
                             load_format="dummy", enforce_eager=True,
                             max_model_len=32, skip_tokenizer_init=True)
    vllm_config = engine_args.create_engine_config()
    with set_current_vllm_config(vllm_config):
        init_distributed_environment(
            world_size=tp, rank=rank, local_rank=rank,
            distributed_init_method=f"tcp://127.0.0.1:{port}", backend="gloo")
        initialize_model_parallel(tensor_model_parallel_size=tp)
        with torch.device("cpu"):
            torch.set_default_dtype(vllm_config.model_config.dtype)
            model = initialize_model(vllm_config=vllm_config)
        files = sorted(os.path.join(model_dir, f) for f in os.listdir(model_dir)
                       if f.endswith(".safetensors"))
        model.load_weights(safetensors_weights_iterator(files, False))
    model.register_parameter(
        "vllm_tensorized_marker",
        nn.Parameter(torch.tensor((1,), device="meta"), requires_grad=False))
    rows = []
    for idx, (module_name, module) in enumerate(model.named_modules()):
        tensors = [(n, t, "PARAM") for n, t in module.named_parameters(recurse=False)]
        tensors += [(n, t, "BUFFER") for n, t in module.named_buffers(recurse=False)]
        for name, t, kind in tensors:
            data = None if t.device.type == "meta" else t.detach().contiguous().view(-1).view(torch.uint8)
            rows.append({
                "name": f"{module_name}.{name}", "module_idx": idx, "type": kind,
                "dtype": str(t.dtype).replace("torch.", ""), "shape": list(t.shape),
                "sha256": None if data is None else hashlib.sha256(data.numpy().tobytes()).hexdigest(),
            })
    modules = [[n, type(m).__name__] for n, m in model.named_modules()]
    with open(os.path.join(out_dir, f"{rank}.json"), "w") as f:
        json.dump({"tensors": rows, "modules": modules}, f)


def main():
    model_dir, tp, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as d:
        mp.spawn(rank_rows, args=(tp, model_dir, port, d), nprocs=tp, join=True)
        ranks = [json.load(open(os.path.join(d, f"{r}.json"))) for r in range(tp)]
    with open(out, "w") as f:
        json.dump(ranks, f)


if __name__ == "__main__":
    main()
