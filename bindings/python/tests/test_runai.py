"""tensorizer_rs's runai_model_streamer: Run:ai Model Streamer's API over
the Rust core, judged against safetensors' own reader (same names, dtypes,
shapes, values, contiguity) and against the calls vLLM makes."""

import os
import struct
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tensorizer_rs.runai_model_streamer import (
    ObjectStorageModel,
    SafetensorsStreamer,
    list_safetensors,
    pull_files,
)
from tensorizer_rs.runai_model_streamer.safetensors_streamer import safetensors_pytorch
from tensorizer_rs.runai_model_streamer.s3_utils.s3_utils import S3Credentials


def _tensors(seed):
    g = torch.Generator().manual_seed(seed)
    return {
        f"layer{seed}.weight": torch.randn(16, 8, generator=g),
        f"layer{seed}.bias": torch.randn(8, generator=g).to(torch.float16),
        f"layer{seed}.ids": torch.arange(10, dtype=torch.int64),
        f"layer{seed}.mask": torch.tensor([True, False, True]),
        f"layer{seed}.empty": torch.zeros(0, 3),
        f"layer{seed}.u8": torch.arange(7, dtype=torch.uint8),
    }


def _theirs(path):
    with safe_open(path, framework="pt", device="cpu") as f:
        return {name: f.get_tensor(name) for name in f.keys()}


def _same(ours, theirs):
    assert ours.keys() == theirs.keys()
    for name, t in ours.items():
        assert t.is_contiguous(), name
        assert t.dtype == theirs[name].dtype, name
        assert t.shape == theirs[name].shape, name
        assert torch.equal(t, theirs[name]), name


@pytest.fixture
def shards(tmp_path):
    paths = []
    for seed in (1, 2):
        path = str(tmp_path / f"model-0000{seed}-of-00002.safetensors")
        save_file(_tensors(seed), path, metadata={"format": "pt"})
        paths.append(path)
    return paths


def test_the_vllm_sequence_gives_safetensors_tensors(shards):
    # What vLLM's runai_safetensors_weights_iterator does.
    ours = {}
    with SafetensorsStreamer() as s:
        s.stream_files(shards, device="cpu", is_distributed=False)
        assert sorted(s.files_to_tensors_metadata) == [0, 1]
        assert s.total_size == sum(os.path.getsize(p) for p in shards) - sum(
            8 + struct.unpack("<Q", open(p, "rb").read(8))[0] for p in shards)
        for name, t in s.get_tensors():
            ours[name] = t.clone()
    theirs = {}
    for p in shards:
        theirs.update(_theirs(p))
    _same(ours, theirs)


def test_stream_file_filters_and_metadata(shards):
    with SafetensorsStreamer() as s:
        s.stream_file(shards[0], None, "cpu", tensor_names=["layer1.ids", "layer1.empty"])
        got = dict(s.get_tensors())
        meta = s.files_to_tensors_metadata[0]
    assert set(got) == {"layer1.ids", "layer1.empty"}
    assert {m.name for m in meta} == set(got)
    assert all(m.offsets.end - m.offsets.start == m.get_bytesize() for m in meta)
    with SafetensorsStreamer() as s:
        with pytest.raises(ValueError, match="does_not_exist"):
            s.stream_files(shards, tensor_names={"does_not_exist"})
        with pytest.raises(ValueError, match="str"):
            s.stream_files(shards, tensor_names="layer1.ids")
        with pytest.raises(ValueError):
            s.stream_files(shards, tensor_names=[])


def test_prepare_request_reads_headers_only(shards):
    with SafetensorsStreamer() as s:
        requests = safetensors_pytorch.prepare_request(s.file_streamer, shards, None)
    assert len(requests) == 2
    offset, metas, sizes = requests[0]
    assert offset == 8 + struct.unpack("<Q", open(shards[0], "rb").read(8))[0]
    assert [m.get_bytesize() for m in metas] == sizes
    starts = [m.offsets.start for m in metas]
    assert starts == sorted(starts) and starts[0] == 0


def test_a_memory_limit_bounds_the_windows_and_loses_nothing(shards, monkeypatch):
    monkeypatch.setenv("RUNAI_STREAMER_MEMORY_LIMIT", "100")
    monkeypatch.setenv("RUNAI_STREAMER_CONCURRENCY", "3")
    with SafetensorsStreamer() as s:
        s.stream_files(shards)
        windows = list(s._windows())
        got = {n: t.clone() for n, t in s.get_tensors()}
    assert len(windows) > 4
    theirs = {}
    for p in shards:
        theirs.update(_theirs(p))
    _same(got, theirs)


def test_distributed_without_a_group_reads_everything_as_runai_does(shards):
    # No torch.distributed group: Run:ai falls back to every rank reading
    # all it is given, and so do we (test_distributed.py has the groups).
    with SafetensorsStreamer() as s:
        s.stream_files(shards, is_distributed=True)
        assert not s.file_streamer.is_distributed
        got = {n: t.clone() for n, t in s.get_tensors()}
    theirs = {}
    for p in shards:
        theirs.update(_theirs(p))
    _same(got, theirs)


def _raw(tmp_path, name, header, data=b""):
    path = tmp_path / name
    body = header.encode() if isinstance(header, str) else header
    path.write_bytes(struct.pack("<Q", len(body)) + body + data)
    return str(path)


@pytest.mark.parametrize("header,data,message", [
    ('{"t":{"dtype":"F32","shape":[10],"data_offsets":[0,4]}}', b"\0" * 4,
     "Shape claims 40 bytes.*but offsets reserve 4"),
    ('{"A":{"dtype":"U8","shape":[10],"data_offsets":[0,10]},'
     '"B":{"dtype":"U8","shape":[10],"data_offsets":[5,15]}}', b"\0" * 20,
     "overlaps with next tensor"),
    ('{"t":{"dtype":"ALIEN_TYPE_128","shape":[1],"data_offsets":[0,4]}}', b"\0" * 4,
     "Unsupported dtype.*ALIEN_TYPE_128"),
    ('{"t":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}', b"\0" * 8, "truncated"),
    ('{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', b"\0" * 8, "extra"),
    ('{"t":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', b"\0" * 8, "start"),
    ('{"t": {"dtype": "F32"', b"", "not valid JSON"),
])
def test_broken_files_raise_value_errors_naming_the_rule(tmp_path, header, data, message):
    path = _raw(tmp_path, "bad.safetensors", header, data)
    with SafetensorsStreamer() as s:
        with pytest.raises(ValueError, match=message):
            s.stream_file(path)


def test_a_header_claiming_too_much_is_refused_before_reading(tmp_path):
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", 100 * 1024 * 1024 + 1) + b"{}")
    with SafetensorsStreamer() as s:
        with pytest.raises(ValueError, match="exceeds limit"):
            s.stream_file(str(path))


def test_list_safetensors_local(shards, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert sorted(list_safetensors(str(tmp_path))) == sorted(shards)
    with pytest.raises(NotImplementedError):
        pull_files(str(tmp_path), str(tmp_path / "out"))


def test_the_alias_answers_import_runai_model_streamer():
    code = ("import runai_model_streamer, sys; "
            "from runai_model_streamer import SafetensorsStreamer; "
            "import runai_model_streamer.safetensors_streamer.safetensors_pytorch as sp; "
            "print(runai_model_streamer.__name__, SafetensorsStreamer.__module__, sp.prepare_request.__module__)")
    env = dict(os.environ, TENSORIZER_RS="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert "tensorizer_rs.runai_model_streamer" in out.stdout, out.stdout


def test_s3_streams_lists_and_pulls(shards, tmp_path, moto_endpoint, monkeypatch):
    import boto3
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, aws_access_key_id="k",
                      aws_secret_access_key="s", region_name="us-east-1")
    for p in shards:
        s3.upload_file(p, "models", f"tiny/{os.path.basename(p)}")
    s3.put_object(Bucket="models", Key="tiny/config.json", Body=b'{"a": 1}')
    s3.put_object(Bucket="models", Key="tiny/sub/tokenizer.json", Body=b"{}")
    # Run:ai's environment: the endpoint, path-style addressing.
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING", "0")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    files = list_safetensors("s3://models/tiny/")
    assert sorted(files) == sorted(f"s3://models/tiny/{os.path.basename(p)}" for p in shards)
    ours = {}
    with SafetensorsStreamer() as s:
        s.stream_files(files, S3Credentials(endpoint=moto_endpoint))
        ours = {n: t.clone() for n, t in s.get_tensors()}
    theirs = {}
    for p in shards:
        theirs.update(_theirs(p))
    _same(ours, theirs)
    dst = tmp_path / "pulled"
    with ObjectStorageModel("s3://models/tiny", str(dst)) as obj:
        obj.pull_files(ignore_pattern=["*.safetensors"])
    assert (dst / "config.json").read_bytes() == b'{"a": 1}'
    assert (dst / "sub" / "tokenizer.json").exists()
    assert (dst / ObjectStorageModel.SENTINEL_NAME).exists()
    assert not list(dst.glob("*.safetensors"))
    # A second one finds the sentinel and downloads nothing.
    with ObjectStorageModel("s3://models/tiny", str(dst)) as obj:
        assert obj._skip


def test_tensor_deserializer_reads_safetensors_through_the_same_engine(shards):
    # The core recognises the format; TensorDeserializer's mapping works on it.
    from tensorizer_rs import TensorDeserializer
    with TensorDeserializer(shards[0], device="cpu") as d:
        ours = {k: v.clone() for k, v in d.items()}
        with pytest.raises(ValueError, match="safetensors"):
            d.to_redis(None, "x")
    _same(ours, _theirs(shards[0]))
