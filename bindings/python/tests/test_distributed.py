"""Distributed loads on gloo, CPU only: 2 and 4 ranks in spawned processes
on loopback. Every rank's tensors equal a single-process load; the bytes
each rank pulled from an HTTP server are about 1/N of the file, together
about 1x; a rank given a corrupt file, or killed mid-load, ends every rank
with an error that names it, within the group's timeout."""

import json
import os
import socket
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tensorizer_rs import DecryptionParams, EncryptionParams, TensorDeserializer, TensorSerializer

TIMEOUT_S = 20


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model(seed=0):
    g = torch.Generator().manual_seed(seed)
    t = {f"layers.{i}.weight": torch.randn(300 + 17 * i, 64, generator=g) for i in range(12)}
    t["embed"] = torch.randn(2000, 64, generator=g).to(torch.bfloat16)
    t["ids"] = torch.arange(1000, dtype=torch.int64)
    t["empty"] = torch.empty(0, 5)
    return t


def _init(rank, world, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world,
                            timeout=timedelta(seconds=TIMEOUT_S))


def _worker(rank, world, port, job, out_dir):
    """Runs `job` on this rank; writes `{"ok": ..., "error": ..., ...}`."""
    result = {"rank": rank}
    started = time.monotonic()
    try:
        _init(rank, world, port)
        result.update(ok=True, **JOBS[job["kind"]](rank, world, job))
    except Exception as e:  # recorded, compared by the parent
        result.update(ok=False, error=f"{type(e).__name__}: {e}")
    result["seconds"] = time.monotonic() - started
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    if dist.is_initialized() and result["ok"]:
        dist.destroy_process_group()


def _digests(tensors):
    import hashlib
    return {k: [str(v.dtype), list(v.shape),
                hashlib.sha256(v.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
                               ).hexdigest() if v.numel() else ""]
            for k, v in tensors.items()}


def _job_safetensors(rank, world, job):
    from tensorizer_rs.distributed import load_safetensors
    from tensorizer_rs import _native
    storage = _native.Storage(**job["storage"]) if job.get("storage") else None
    paths = [p.replace("{rank}", str(rank)) for p in job["paths"]]
    return {"tensors": _digests(load_safetensors(paths, storage=storage,
                                                 budget=job.get("budget")))}


def _job_tensors(rank, world, job):
    enc = DecryptionParams.from_key(bytes.fromhex(job["key"])) if job.get("key") else None
    path = job["path"].replace("{rank}", str(rank))
    d = TensorDeserializer(path, encryption=enc, verify_hash=job.get("verify", False),
                           process_group=dist.group.WORLD)
    return {"tensors": _digests({k: v.detach() for k, v in d.items()})}


def _job_killed(rank, world, job):
    """Rank 1 dies after reading part of its share."""
    import tensorizer_rs.distributed as d
    real = d.raw_reader

    def dying(sources, extents):
        inner = real(sources, extents)

        def read(jobs):
            inner(jobs)
            if rank == 1:
                os._exit(3)
        return read
    d.raw_reader = dying
    return _job_safetensors(rank, world, job)


JOBS = {"safetensors": _job_safetensors, "tensors": _job_tensors, "killed": _job_killed}


def _run(world, job, tmp_path, expect_exit=False):
    out = tmp_path / f"out-{world}-{time.monotonic_ns()}"
    out.mkdir()
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, world, port, job, str(out))) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(TIMEOUT_S * 3)
        assert not p.is_alive(), "a rank hung past three group timeouts"
    results = {}
    for r in range(world):
        f = out / f"rank{r}.json"
        if f.exists():
            results[r] = json.loads(f.read_text())
    if not expect_exit:
        assert len(results) == world, f"ranks without a result: {results}"
    return results


@pytest.fixture
def st_file(tmp_path):
    from safetensors.torch import save_file
    path = tmp_path / "model.safetensors"
    save_file(_model(), str(path))
    return path


def _single(tensors):
    return _digests(tensors)


@pytest.mark.parametrize("world", [2, 4])
def test_every_rank_gets_the_single_process_tensors_safetensors(st_file, tmp_path, world):
    from safetensors.torch import load_file
    want = _single(load_file(str(st_file)))
    # A small budget: many windows, each split among the ranks.
    results = _run(world, {"kind": "safetensors", "paths": [str(st_file)], "budget": 64 << 10},
                   tmp_path)
    for r in range(world):
        assert results[r]["ok"], results[r]
        assert results[r]["tensors"] == want, f"rank {r}"


@pytest.mark.parametrize("encrypted", [False, True])
def test_every_rank_gets_the_single_process_tensors_tensorizer(tmp_path, encrypted):
    path = tmp_path / "model.tensors"
    enc = EncryptionParams.random() if encrypted else None
    s = TensorSerializer(str(path), encryption=enc)
    s.write_state_dict(_model())
    s.close()
    dec = DecryptionParams.from_key(enc.key) if encrypted else None
    want = _single({k: v.detach() for k, v in TensorDeserializer(str(path), encryption=dec).items()})
    job = {"kind": "tensors", "path": str(path), "verify": True,
           "key": enc.key.hex() if encrypted else None}
    results = _run(2, job, tmp_path)
    for r in range(2):
        assert results[r]["ok"], results[r]
        assert results[r]["tensors"] == want, f"rank {r}"


class _CountingServer:
    """Serves one file over HTTP with ranges, counting the bytes sent to
    each `?rank=R` asker."""

    def __init__(self, path):
        data = path.read_bytes()
        counts = self.counts = {}
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _range(self):
                header = self.headers.get("Range")
                if not header:
                    return 0, len(data)
                a, b = header.split("=")[1].split("-")
                return int(a), min(int(b) + 1 if b else len(data), len(data))

            def do_HEAD(self):
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()

            def do_GET(self):
                a, b = self._range()
                rank = parse_qs(urlparse(self.path).query).get("rank", ["?"])[0]
                with lock:
                    counts[rank] = counts.get(rank, 0) + (b - a)
                self.send_response(206 if self.headers.get("Range") else 200)
                self.send_header("Content-Length", str(b - a))
                self.send_header("Content-Range", f"bytes {a}-{b - 1}/{len(data)}")
                self.end_headers()
                self.wfile.write(data[a:b])

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


@pytest.mark.parametrize("world", [2, 4])
def test_over_http_each_rank_pulls_its_share_and_the_group_the_file_once(tmp_path, world):
    from safetensors.torch import save_file, load_file
    path = tmp_path / "big.safetensors"
    g = torch.Generator().manual_seed(1)
    save_file({f"w{i}": torch.randn(256, 1024, generator=g) for i in range(8)}, str(path))
    server = _CountingServer(path)
    try:
        url = f"http://127.0.0.1:{server.port}/big.safetensors?rank={{rank}}"
        results = _run(world, {"kind": "safetensors", "paths": [url], "budget": 64 << 20}, tmp_path)
    finally:
        server.close()
    want = _single(load_file(str(path)))
    for r in range(world):
        assert results[r]["ok"], results[r]
        assert results[r]["tensors"] == want
    size = path.stat().st_size
    served = sum(server.counts.values())
    shares = [server.counts.get(str(r), 0) for r in range(world)]
    # Headers (two small reads a rank) aside, the file once in all, and
    # each rank within one 16 MiB request of an equal share.
    assert served < size + world * (1 << 20), (served, size)
    for share in shares:
        assert abs(share - size / world) < (1 << 20) + size / world * 0.15, (shares, size)


def test_encrypted_tensorizer_over_http_reads_each_tensor_once(tmp_path):
    path = tmp_path / "model.tensors"
    enc = EncryptionParams.random()
    g = torch.Generator().manual_seed(2)
    s = TensorSerializer(str(path), encryption=enc)
    s.write_state_dict({f"w{i}": torch.randn(128, 1024, generator=g) for i in range(8)})
    s.close()
    want = _single({k: v.detach() for k, v in TensorDeserializer(
        str(path), encryption=DecryptionParams.from_key(enc.key)).items()})
    server = _CountingServer(path)
    try:
        url = f"http://127.0.0.1:{server.port}/model.tensors?rank={{rank}}"
        results = _run(2, {"kind": "tensors", "path": url, "verify": True, "key": enc.key.hex()},
                       tmp_path)
    finally:
        server.close()
    for r in range(2):
        assert results[r]["ok"], results[r]
        assert results[r]["tensors"] == want
    size = path.stat().st_size
    shares = [server.counts.get(str(r), 0) for r in range(2)]
    # Whole tensors of 512 KiB: four each; the index read by both.
    assert sum(shares) < size * 1.1, (shares, size)
    assert all(abs(x - size / 2) < size * 0.15 for x in shares), (shares, size)


def test_s3_loads_are_distributed_too(st_file, tmp_path, moto_endpoint):
    import boto3
    from safetensors.torch import load_file
    boto3.client("s3", endpoint_url=moto_endpoint, aws_access_key_id="k",
                 aws_secret_access_key="s", region_name="us-east-1").upload_file(
        str(st_file), "models", "m/model.safetensors")
    storage = {"s3_access_key_id": "k", "s3_secret_access_key": "s", "s3_endpoint": moto_endpoint}
    results = _run(2, {"kind": "safetensors", "paths": ["s3://models/m/model.safetensors"],
                       "storage": storage, "budget": 64 << 10}, tmp_path)
    want = _single(load_file(str(st_file)))
    for r in range(2):
        assert results[r]["ok"], results[r]
        assert results[r]["tensors"] == want


def test_a_rank_with_a_corrupt_file_fails_every_rank_naming_it(tmp_path):
    path = tmp_path / "good.tensors"
    s = TensorSerializer(str(path))
    s.write_state_dict(_model())
    s.close()
    from tensorizer_rs import _native
    offsets = {row[0]: row[6] for row in _native.Reader(str(path)).entries()}
    bad = bytearray(path.read_bytes())
    bad[offsets["ids"] + 5] ^= 0xFF  # in the data of a tensor at the end: rank 1's share
    (tmp_path / "rank1.tensors").write_bytes(bytes(bad))
    (tmp_path / "rank0.tensors").write_bytes(path.read_bytes())
    results = _run(2, {"kind": "tensors", "path": str(tmp_path / "rank{rank}.tensors"),
                       "verify": True}, tmp_path)
    for r in range(2):
        assert not results[r]["ok"], results[r]
        assert "rank 1 of 2" in results[r]["error"], results[r]
        assert "DistributedLoadError" in results[r]["error"], results[r]
        assert results[r]["seconds"] < TIMEOUT_S + 10


def test_a_rank_whose_file_is_missing_fails_every_rank(st_file, tmp_path):
    (tmp_path / "rank0.safetensors").write_bytes(st_file.read_bytes())
    results = _run(2, {"kind": "safetensors", "paths": [str(tmp_path / "rank{rank}.safetensors")]},
                   tmp_path)
    for r in range(2):
        assert not results[r]["ok"], results[r]
        assert "rank 1 of 2" in results[r]["error"], results[r]
        assert "rank1.safetensors" in results[r]["error"], results[r]


def test_a_rank_killed_mid_load_ends_the_others_within_the_timeout(st_file, tmp_path):
    results = _run(2, {"kind": "killed", "paths": [str(st_file)], "budget": 64 << 10}, tmp_path,
                   expect_exit=True)
    assert 1 not in results, "rank 1 died"
    assert not results[0]["ok"], results[0]
    assert "DistributedLoadError" in results[0]["error"], results[0]
    assert results[0]["seconds"] < TIMEOUT_S + 10, results[0]


def test_the_plan_covers_every_byte_once():
    from tensorizer_rs import _native
    extents = [(0, 0, 100, False), (0, 100, 0, False), (1, 8, 250, True), (1, 258, 50, False)]
    for world in (1, 2, 3, 5):
        plan = _native.partition(extents, world, 16)
        assert len(plan) == world
        for k, (_, _, size, whole) in enumerate(extents):
            spans = sorted((s, n) for mine in plan for e, s, n in mine if e == k)
            assert spans and sum(n for _, n in spans) == size
            assert all(a + n == b for (a, n), (b, _) in zip(spans, spans[1:]))
            if whole:
                assert len([n for _, n in spans if n]) <= 1
