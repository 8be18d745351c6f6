#!/usr/bin/env python3
"""vllm_functions.py -- vLLM 0.33.0's own tensorizer functions, run on the
real tensorizer library and on tensorizer_rs, and compared.

For a checkpoint and a tensor-parallel size, twice: once with the real
library, once with TENSORIZER_RS=1 (the wheel's .pth hook makes every
`import tensorizer` of vLLM load tensorizer_rs; vLLM's code is unchanged).
Each time, with and without an encryption key file:

  tensorize_vllm_model    generates the key file through open_stream(...,
                          "wb+") (the engine it then starts is replaced by
                          one that records the config: no GPU here);
  serialize_vllm_model    per rank (what each worker's save_tensorized_model
                          runs): open_stream(path, "wb+") + TensorSerializer
                          + write_module + close, then
  serialize_extra_artifacts  (the hub download replaced by a copy of the
                          checkpoint's non-weight files);
  is_vllm_tensorized;
  deserialize_tensorizer_model into a model built in meta_tensor_mode,
                          compared with the model vLLM's own loaders built;
  tensorizer_weights_iterator, every name and tensor.

Then: unencrypted files byte-identical between the sides; every load equal
to vLLM's model; the same iterator output; the same artifacts. One line per
check, and the exit status.

Usage (the python of scripts/setup_vllm.sh's venv, with the tensorizer_rs
wheel installed): vllm_functions.py MODEL_DIR TP
"""
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def sha(data):
    return hashlib.sha256(data).hexdigest()


def tensor_sha(t):
    import torch
    t = t.detach().to("cpu").contiguous().reshape(-1)
    return sha(t.view(torch.uint8).numpy().tobytes()) if t.numel() else sha(b"")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _LocalHub:
    """hf_api() for serialize_extra_artifacts: the snapshot is the
    checkpoint directory's files (no network here)."""

    def __init__(self, model_dir):
        self.model_dir = model_dir

    def snapshot_download(self, repo_id, revision=None, local_dir=None, ignore_patterns=()):
        import fnmatch
        for name in os.listdir(self.model_dir):
            if not any(fnmatch.fnmatch(name, p) for p in ignore_patterns):
                shutil.copy(os.path.join(self.model_dir, name), os.path.join(local_dir, name))
        return local_dir


def status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def reset_peak_rss():
    """Resets VmHWM to the current RSS and returns it (KiB)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return status_kib("VmRSS:")


def rank_main(rank, tp, model_dir, port, out_dir, config_json, result_dir):
    sys.path.insert(0, HERE)
    import torch
    from vllm_reference import build_rank_model, use_cpu_platform
    use_cpu_platform()  # before vLLM modules bind current_platform
    import vllm.model_executor.model_loader.tensorizer as vt
    from vllm.config import set_current_vllm_config
    from vllm.model_executor.model_loader.tensorizer import (
        TensorizerArgs, TensorizerConfig, deserialize_tensorizer_model,
        is_vllm_tensorized, meta_tensor_mode, serialize_vllm_model,
        tensorizer_weights_iterator)
    from vllm.model_executor.model_loader.utils import initialize_model

    vt.hf_api = lambda: _LocalHub(model_dir)
    # The CUDA build of torch asks the (absent) driver for the current
    # device; on vLLM's CPU platform the load device is then "cpu:0".
    torch.accelerator.current_device_index = lambda: 0
    engine_args, vllm_config, model = build_rank_model(rank, tp, model_dir, port)
    reference = {k: tensor_sha(v) for k, v in model.state_dict().items()}
    config = json.loads(config_json)
    model_config = vllm_config.model_config
    model_config.served_model_name = "tiny/model"
    # What the write adds to the rank's memory: VmHWM reset (clear_refs 5)
    # with the model built, read after serialize_vllm_model returns.
    base = reset_peak_rss()
    with set_current_vllm_config(vllm_config):
        serialize_vllm_model(model, TensorizerConfig(**config), model_config)
    write_rss = status_kib("VmHWM:") - base
    uri = config["tensorizer_uri"]
    path = uri % rank if tp > 1 else uri
    result = {"file_sha256": sha(open(path, "rb").read()), "write_rss_kib": write_rss,
              "model_bytes": sum(t.numel() * t.element_size() for t in model.state_dict().values()),
              "largest_tensor": max(t.numel() * t.element_size()
                                    for t in model.state_dict().values())}

    load_config = TensorizerConfig(**{**config, "tensorizer_uri": path, "verify_hash": True})
    result["is_vllm_tensorized"] = is_vllm_tensorized(load_config)
    load_config.dtype = model_config.dtype
    # A config of its own: layer names are registered per config.
    fresh_config = engine_args.create_engine_config()
    with set_current_vllm_config(fresh_config), meta_tensor_mode(), torch.device("cpu"):
        fresh = initialize_model(vllm_config=fresh_config)
    with set_current_vllm_config(fresh_config):
        deserialize_tensorizer_model(fresh, load_config)
    loaded = {k: tensor_sha(v) for k, v in fresh.state_dict().items()}
    reference.pop("vllm_tensorized_marker", None)
    result["loaded"] = loaded
    # Entries that differ from vLLM's own model: the library's dtype= casts
    # every non-bool tensor, so float32 buffers (attention scales, the
    # rotary cache) come back in the model dtype. Both sides must agree.
    result["deserialized_differ"] = sorted(k for k in set(loaded) | set(reference)
                                           if loaded.get(k) != reference.get(k))
    rows = [(k, tensor_sha(v), str(v.dtype), v.requires_grad)
            for k, v in tensorizer_weights_iterator(TensorizerArgs(load_config))]
    result["weights_iterator"] = rows
    with open(os.path.join(result_dir, f"{rank}.json"), "w") as f:
        json.dump(result, f)


def side_main(side, model_dir, tp, out_dir, keyfile):
    """One side, in its own process (the alias is per process)."""
    sys.path.insert(0, HERE)
    import torch.multiprocessing as mp
    from vllm_reference import use_cpu_platform
    use_cpu_platform()
    import tensorizer
    where = os.path.dirname(tensorizer.__file__)
    assert ("tensorizer_rs" in where) == (side == "tensorizer_rs"), where
    import vllm.model_executor.model_loader.tensorizer as vt
    from vllm.engine.arg_utils import EngineArgs
    from vllm.model_executor.model_loader.tensorizer import (TensorizerConfig,
                                                             tensorize_vllm_model)

    uri = os.path.join(out_dir, "model-rank-%03d.tensors" if tp > 1 else "model.tensors")
    config = TensorizerConfig(tensorizer_uri=uri, encryption_keyfile=keyfile)
    recorded = {}

    class _Engine:
        """Stands for the engine tensorize_vllm_model starts (no GPU here):
        records the config its workers would serialize with."""
        renderer = type("R", (), {"shutdown": staticmethod(lambda: None)})
        engine_core = type("C", (), {"shutdown": staticmethod(lambda timeout=None: None)})

        def collective_rpc(self, method, kwargs=None):
            recorded["method"], recorded["config"] = method, kwargs["tensorizer_config"]

    import vllm.v1.engine.llm_engine as llm_engine
    llm_engine.LLMEngine.from_vllm_config = staticmethod(lambda *a, **k: _Engine())
    engine_args = EngineArgs(model=model_dir, tensor_parallel_size=tp, load_format="dummy",
                             enforce_eager=True, max_model_len=32, skip_tokenizer_init=True)
    tensorize_vllm_model(engine_args, config)
    assert recorded["method"] == "save_tensorized_model", recorded
    result_dir = tempfile.mkdtemp()
    mp.spawn(rank_main, args=(tp, model_dir, free_port(), out_dir,
                              json.dumps(recorded["config"]), result_dir), nprocs=tp, join=True)
    ranks = [json.load(open(os.path.join(result_dir, f"{r}.json"))) for r in range(tp)]
    artifacts = {n: sha(open(os.path.join(out_dir, n), "rb").read())
                 for n in sorted(os.listdir(out_dir)) if not n.endswith(".tensors")}
    key = open(keyfile, "rb").read() if keyfile else None
    return {"ranks": ranks, "artifacts": artifacts, "key_len": None if key is None else len(key),
            "key_mode": None if key is None else oct(os.stat(keyfile).st_mode & 0o777)}


def main():
    if len(sys.argv) == 7 and sys.argv[1] == "--side":
        side, model_dir, tp, out_dir, keyfile = sys.argv[2:7]
        out = side_main(side, model_dir, int(tp), out_dir, keyfile or None)
        print("RESULT " + json.dumps(out))
        return 0
    model_dir, tp = os.path.abspath(sys.argv[1]), int(sys.argv[2])
    results, failures = {}, 0
    root = tempfile.mkdtemp(prefix="vllm-functions-")
    for encrypted in (False, True):
        for side in ("reference", "tensorizer_rs"):
            out_dir = os.path.join(root, f"{side}-{'enc' if encrypted else 'plain'}")
            os.makedirs(out_dir)
            keyfile = os.path.join(root, f"{side}.key") if encrypted else ""
            env = {k: v for k, v in os.environ.items() if k != "TENSORIZER_RS"}
            if side == "tensorizer_rs":
                env["TENSORIZER_RS"] = "1"
            proc = subprocess.run([sys.executable, __file__, "--side", side, model_dir, str(tp),
                                   out_dir, keyfile], env=env, capture_output=True, text=True)
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode != 0 or not line:
                print(f"FAIL {side} encrypted={encrypted}: exit {proc.returncode}\n"
                      f"{proc.stderr[-4000:]}")
                failures += 1
                continue
            results[(side, encrypted)] = json.loads(line[0][7:])

    def check(what, ok):
        nonlocal failures
        print(f"{'ok  ' if ok else 'FAIL'} tp={tp} {what}")
        failures += not ok

    for encrypted in (False, True):
        lib, rs = results.get(("reference", encrypted)), results.get(("tensorizer_rs", encrypted))
        if lib is None or rs is None:
            continue
        tag = "encrypted" if encrypted else "plain"
        for side, r in (("library", lib), ("tensorizer_rs", rs)):
            for i, rank in enumerate(r["ranks"]):
                check(f"{tag} rank {i} on {side}: is_vllm_tensorized", rank["is_vllm_tensorized"])
        for i, (a, b) in enumerate(zip(lib["ranks"], rs["ranks"])):
            weights = [k for k in a["loaded"] if k not in a["deserialized_differ"]]
            check(f"{tag} rank {i}: deserialize_tensorizer_model loads the same state dict on "
                  f"both ({len(a['loaded'])} entries; {len(weights)} equal to vLLM's own load, "
                  f"the {len(a['deserialized_differ'])} others float32 buffers cast to the model "
                  "dtype by dtype=, on both)",
                  a["loaded"] == b["loaded"] and a["deserialized_differ"] == b["deserialized_differ"]
                  and all(".attn._" in k or "cos_sin_cache" in k for k in a["deserialized_differ"]))
            if not encrypted:
                check(f"{tag} rank {i}: serialize_vllm_model files byte-identical",
                      a["file_sha256"] == b["file_sha256"])
            print(f"info tp={tp} {tag} rank {i}: serialize_vllm_model peak RSS above the rank's "
                  f"baseline: library {a['write_rss_kib'] / 1024:.1f} MiB, tensorizer_rs "
                  f"{b['write_rss_kib'] / 1024:.1f} MiB (rank's model {a['model_bytes'] / 2**20:.1f}"
                  f" MiB, largest tensor {a['largest_tensor'] / 2**20:.1f} MiB)")
            check(f"{tag} rank {i}: tensorizer_weights_iterator identical (names, bytes, "
                  "dtypes, requires_grad)", a["weights_iterator"] == b["weights_iterator"])
        check(f"{tag}: serialize_extra_artifacts wrote the same files",
              lib["artifacts"] == rs["artifacts"] and len(rs["artifacts"]) > 0)
        if encrypted:
            check(f"{tag}: tensorize_vllm_model wrote a 32-byte key file through open_stream",
                  rs["key_len"] == 32 and lib["key_len"] == 32)
    print(f"vllm functions, tp={tp}: {'all passed' if failures == 0 else f'{failures} failed'}")
    if failures == 0:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
