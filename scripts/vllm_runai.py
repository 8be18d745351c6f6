#!/usr/bin/env python3
"""vllm_runai.py -- vLLM 0.33.0's `--load-format runai_streamer` path on
Run:ai Model Streamer 0.17.0 and on tensorizer_rs's runai_model_streamer,
compared, on the CPU.

For a checkpoint, twice: once with the real package, once with
TENSORIZER_RS=1 (the wheel's .pth hook makes vLLM's `import
runai_model_streamer` load ours; vLLM's code is unchanged). Each time, from
the local directory and from s3:// (a moto server on loopback, reached
through AWS_ENDPOINT_URL as Run:ai documents), at TP 1 and TP 2 (gloo, one
process per rank):

  runai_safetensors_weights_iterator(files)   every name and tensor;
  RunaiModelStreamerLoader.load_weights        into each rank's model, whose
                                               state dict must equal the one
                                               vLLM's own safetensors loader
                                               gives that rank.

Then: each side's loads equal vLLM's own; both sides' iterators identical.

Usage (the python of scripts/setup_vllm.sh's venv, with both packages and
the tensorizer_rs wheel installed): vllm_runai.py MODEL_DIR MOTO_SERVER
"""
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))


def sha(t):
    import torch
    t = t.detach().to("cpu").contiguous().reshape(-1)
    return hashlib.sha256(t.view(torch.uint8).numpy().tobytes()).hexdigest() if t.numel() else ""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_main(rank, tp, model_dir, source, port, result_dir):
    sys.path.insert(0, HERE)
    from vllm_reference import build_rank_model, use_cpu_platform
    use_cpu_platform()
    import torch
    from vllm.config import set_current_vllm_config
    from vllm.config.load import LoadConfig
    from vllm.model_executor.model_loader.runai_streamer_loader import RunaiModelStreamerLoader
    from vllm.model_executor.model_loader.utils import initialize_model
    torch.accelerator.current_device_index = lambda: 0
    engine_args, vllm_config, reference = build_rank_model(rank, tp, model_dir, port)
    theirs = {k: sha(v) for k, v in reference.state_dict().items()}
    fresh_config = engine_args.create_engine_config()
    with set_current_vllm_config(fresh_config), torch.device("cpu"):
        model = initialize_model(vllm_config=fresh_config)
        model_config = fresh_config.model_config
        model_config.model_weights = source
        RunaiModelStreamerLoader(LoadConfig(load_format="runai_streamer")).load_weights(
            model, model_config)
    ours = {k: sha(v) for k, v in model.state_dict().items()}
    differ = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
    with open(os.path.join(result_dir, f"{rank}.json"), "w") as f:
        json.dump({"entries": len(ours), "differ": differ}, f)


def side_main(side, model_dir, source):
    sys.path.insert(0, HERE)
    from vllm_reference import use_cpu_platform
    use_cpu_platform()
    import runai_model_streamer
    where = os.path.dirname(runai_model_streamer.__file__)
    assert ("tensorizer_rs" in where) == (side == "tensorizer_rs"), where
    import torch.multiprocessing as mp
    from vllm.model_executor.model_loader.weight_utils import runai_safetensors_weights_iterator
    from vllm.transformers_utils.runai_utils import list_safetensors
    files = sorted(list_safetensors(source))
    iterated = sorted((name, sha(t), str(t.dtype), list(t.shape))
                      for name, t in runai_safetensors_weights_iterator(files, False))
    out = {"files": [os.path.basename(f) for f in files], "iterator": iterated, "tp": {}}
    for tp in (1, 2):
        result_dir = tempfile.mkdtemp()
        mp.spawn(rank_main, args=(tp, model_dir, source, free_port(), result_dir),
                 nprocs=tp, join=True)
        out["tp"][tp] = [json.load(open(os.path.join(result_dir, f"{r}.json"))) for r in range(tp)]
    return out


def put(endpoint, path, data=b""):
    # A binary body (urllib would call it a form, which the server parses).
    req = urllib.request.Request(f"{endpoint}/{path}", data=data, method="PUT",
                                 headers={"Content-Type": "application/octet-stream"})
    urllib.request.urlopen(req, timeout=60).read()


def wait_listening(port, seconds=60):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"moto did not listen on port {port} within {seconds} s")


def main():
    if len(sys.argv) == 5 and sys.argv[1] == "--side":
        print("RESULT " + json.dumps(side_main(*sys.argv[2:5])))
        return 0
    model_dir, moto = os.path.abspath(sys.argv[1]), sys.argv[2]
    port = free_port()
    server = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    failures = 0
    try:
        wait_listening(port)
        put(endpoint, "models")
        for name in os.listdir(model_dir):
            if name.endswith(".safetensors"):
                put(endpoint, f"models/tiny/{name}", open(os.path.join(model_dir, name), "rb").read())
        env_s3 = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "k",
                  "AWS_SECRET_ACCESS_KEY": "s", "AWS_REGION": "us-east-1",
                  "AWS_EC2_METADATA_DISABLED": "true",
                  "RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING": "0"}
        results = {}
        for source in (model_dir, "s3://models/tiny/"):
            for side in ("reference", "tensorizer_rs"):
                env = {k: v for k, v in os.environ.items() if k != "TENSORIZER_RS"}
                env.update(env_s3)
                if side == "tensorizer_rs":
                    env["TENSORIZER_RS"] = "1"
                proc = subprocess.run([sys.executable, __file__, "--side", side, model_dir, source],
                                      env=env, capture_output=True, text=True)
                line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
                if proc.returncode != 0 or not line:
                    print(f"FAIL {side} from {source}: exit {proc.returncode}\n{proc.stderr[-4000:]}")
                    failures += 1
                    continue
                results[(side, source)] = json.loads(line[0][7:])

        def check(what, ok):
            nonlocal failures
            print(f"{'ok  ' if ok else 'FAIL'} {what}")
            failures += not ok

        for source in (model_dir, "s3://models/tiny/"):
            where = "s3" if source.startswith("s3://") else "local"
            lib, rs = results.get(("reference", source)), results.get(("tensorizer_rs", source))
            if lib is None or rs is None:
                continue
            check(f"{where}: list_safetensors finds the same files on both ({len(rs['files'])})",
                  lib["files"] == rs["files"] and rs["files"])
            check(f"{where}: runai_safetensors_weights_iterator identical on both "
                  f"({len(rs['iterator'])} tensors: names, bytes, dtypes, shapes)",
                  lib["iterator"] == rs["iterator"])
            for tp in ("1", "2"):
                for side, r in (("Run:ai", lib), ("tensorizer_rs", rs)):
                    for rank, got in enumerate(r["tp"][tp]):
                        check(f"{where} TP {tp} rank {rank} on {side}: RunaiModelStreamerLoader "
                              f"loads vLLM's own state dict ({got['entries']} entries)",
                              not got["differ"])
    finally:
        server.kill()
    print(f"vllm runai_streamer: {'all passed' if failures == 0 else f'{failures} failed'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
