#!/usr/bin/env python3
"""vllm_reference.py -- what vLLM itself would write with `serialize_vllm_model`
for a checkpoint at a tensor-parallel size, without a GPU: each rank's model
class is built by vLLM on the CPU (gloo process group, one process per rank),
its weights loaded by vLLM's own weight loaders from the checkpoint, the
marker registered, and every tensor `TensorSerializer.write_module` would
write listed with its module index, type, dtype, shape and SHA-256.

With OURS (a `%03d` template of rank files), each rank's file is also loaded
the way vLLM's tensorizer loader does (`deserialize_tensorizer_model`: a
model built in `meta_tensor_mode()`, `TensorDeserializer(...,
dtype=model dtype).load_into_module(model)`, the meta-device check, the
marker deleted), on the CPU instead of a GPU, and its state dict compared
with the one vLLM's weight loaders produced.

Usage (python of a venv with vllm, e.g. from `cargo xtask vllm-reference`):
    vllm_reference.py MODEL_DIR TP OUT.json [OURS]
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


def load_like_vllm(engine_args, path, reference):
    """vLLM's deserialize_tensorizer_model on the CPU; names of the state-dict
    entries that differ from `reference` (a model loaded by vLLM itself)."""
    from tensorizer import TensorDeserializer
    from vllm.config import set_current_vllm_config
    from vllm.model_executor.model_loader.tensorizer import (
        _check_tensors_on_meta_device, meta_tensor_mode)
    from vllm.model_executor.model_loader.utils import initialize_model
    # Snapshot first: get_rope caches rotary modules process-wide, so both
    # models share one and loading ours would overwrite the reference's.
    reference_buffers = {n: b.detach().clone() for n, b in reference.named_buffers()}
    # A config of its own: layer names are registered per config.
    vllm_config = engine_args.create_engine_config()
    with set_current_vllm_config(vllm_config), meta_tensor_mode(), torch.device("cpu"):
        model = initialize_model(vllm_config=vllm_config)
    with TensorDeserializer(path, device="cpu", dtype=vllm_config.model_config.dtype,
                            verify_hash=True) as d:
        d.load_into_module(model)
    _check_tensors_on_meta_device(model)
    del model.vllm_tensorized_marker
    ours, theirs = model.state_dict(), reference.state_dict()
    theirs = {k: v for k, v in theirs.items() if k != "vllm_tensorized_marker"}
    differ = sorted(k for k in set(ours) | set(theirs)
                    if k not in ours or k not in theirs or not torch.equal(ours[k], theirs[k]))
    # Non-persistent buffers (the rotary cache) are not in state dicts.
    rotary = {}
    mine = dict(model.named_buffers())
    for name, b in reference_buffers.items():
        if name.endswith("cos_sin_cache") and name in mine:
            m = mine[name].detach()
            rotary[name] = [int((m != b).sum()), b.numel(), float((m.float() - b.float()).abs().max())]
    return {"ok": True, "differ": differ, "entries": len(ours), "rotary": rotary}


def build_rank_model(rank, tp, model_dir, port):
    """vLLM's model class for `rank` of `tp`, on the CPU (gloo), with the
    checkpoint's weights loaded by vLLM's own weight loaders; returns
    (engine_args, vllm_config, model)."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    use_cpu_platform()
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
    return engine_args, vllm_config, model


def rank_rows(rank, tp, model_dir, port, out_dir, ours):
    from torch import nn
    engine_args, vllm_config, model = build_rank_model(rank, tp, model_dir, port)
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
    loaded = None
    if ours:
        try:
            loaded = load_like_vllm(engine_args, ours % rank, model)
        except Exception as e:  # report, the comparison says which rank failed
            loaded = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    with open(os.path.join(out_dir, f"{rank}.json"), "w") as f:
        json.dump({"tensors": rows, "modules": modules, "loaded": loaded}, f)


def main():
    model_dir, tp, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    ours = sys.argv[4] if len(sys.argv) > 4 else None
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as d:
        mp.spawn(rank_rows, args=(tp, model_dir, port, d, ours), nprocs=tp, join=True)
        ranks = [json.load(open(os.path.join(d, f"{r}.json"))) for r in range(tp)]
    with open(out, "w") as f:
        json.dump(ranks, f)


if __name__ == "__main__":
    main()
