"""tensorizer_rs against the Python library 2.12.1 (the oracle venv's
`tensorizer`): the same tensors from every fixture, byte-identical files
from the same tensors, encrypted files read both ways, the Python
library's exception classes, and the drop-in switch.

Run: `cargo xtask python-test` (builds and installs the wheel, then pytest).
"""
import gc
import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

import tensorizer  # the reference library
import tensorizer_rs
from tensorizer_rs import (DecryptionParams, EncryptionParams, TensorDeserializer,
                           TensorSerializer)

FIXTURES = pathlib.Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "tensorizer-2.12.1"


def raw(t):
    t = t.detach().contiguous().reshape(-1)
    return bytes(t.view(torch.uint8).numpy()) if t.numel() else b""


def same(ours, theirs, where):
    if isinstance(theirs, torch.Tensor):
        assert type(ours) is type(theirs), where
        assert (ours.dtype, tuple(ours.shape)) == (theirs.dtype, tuple(theirs.shape)), where
        assert raw(ours) == raw(theirs), where
    else:
        assert list(ours.keys()) == list(theirs.keys()), where
        for k in theirs.keys():
            same(ours[k], theirs[k], (where, k))


def plain_fixtures():
    manifest = json.loads((FIXTURES / "manifest.json").read_text())
    return [f["file"] for f in manifest["fixtures"] if not f["must_fail"] and f["encryption"] is None]


@pytest.mark.parametrize("name", plain_fixtures())
def test_every_fixture_loads_as_python_loads_it(name):
    path = str(FIXTURES / name)
    ours = TensorDeserializer(path, device="cpu")
    theirs = tensorizer.TensorDeserializer(path, device="cpu")
    assert list(ours.keys()) == list(theirs.keys())
    for k in theirs.keys():
        same(ours[k], theirs[k], k)


@pytest.fixture
def state_dict():
    torch.manual_seed(0)
    return {"a": torch.randn(3, 4), "b": torch.arange(10, dtype=torch.int64),
            "c": torch.randn(5).to(torch.bfloat16),
            "nested": {"x": torch.ones(2), "y": [torch.zeros(3), torch.ones(1, dtype=torch.float16)]}}


def test_written_files_are_byte_identical(tmp_path, state_dict):
    s = TensorSerializer(str(tmp_path / "ours.tensors"))
    s.write_state_dict(state_dict)
    s.close()
    p = tensorizer.TensorSerializer(str(tmp_path / "py.tensors"))
    p.write_state_dict(state_dict)
    p.close()
    assert (tmp_path / "ours.tensors").read_bytes() == (tmp_path / "py.tensors").read_bytes()

    m = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3), torch.nn.BatchNorm1d(3))
    with TensorSerializer(str(tmp_path / "m_ours.tensors")) as s:
        s.write_module(m)
    p = tensorizer.TensorSerializer(str(tmp_path / "m_py.tensors"))
    p.write_module(m)
    p.close()
    assert (tmp_path / "m_ours.tensors").read_bytes() == (tmp_path / "m_py.tensors").read_bytes()


def test_load_into_module(tmp_path):
    m = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3), torch.nn.BatchNorm1d(3))
    p = tensorizer.TensorSerializer(str(tmp_path / "m.tensors"))
    p.write_module(m)
    p.close()
    fresh = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3), torch.nn.BatchNorm1d(3))
    assert TensorDeserializer(str(tmp_path / "m.tensors")).load_into_module(fresh) == 9
    for (k, a), b in zip(m.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k
    assert isinstance(fresh[0].weight, torch.nn.Parameter)


def test_encrypted_both_ways(tmp_path, state_dict):
    key = EncryptionParams.random()
    with TensorSerializer(str(tmp_path / "ours.tensors"), encryption=key) as s:
        s.write_state_dict(state_dict)
    t = tensorizer.TensorDeserializer(str(tmp_path / "ours.tensors"), device="cpu",
                                      encryption=tensorizer.DecryptionParams.from_key(key.key))
    assert torch.equal(t["a"], state_dict["a"])

    theirs = tensorizer.EncryptionParams.random()
    p = tensorizer.TensorSerializer(str(tmp_path / "py.tensors"), encryption=theirs)
    p.write_state_dict(state_dict)
    p.close()
    o = TensorDeserializer(str(tmp_path / "py.tensors"), encryption=DecryptionParams.from_key(theirs.key))
    assert torch.equal(o["a"], state_dict["a"])

    pw = EncryptionParams.from_string("hunter2", opslimit=EncryptionParams.OpsLimit.MIN,
                                      memlimit=EncryptionParams.MemLimit.MIN)
    with TensorSerializer(str(tmp_path / "pw.tensors"), encryption=pw) as s:
        s.write_state_dict(state_dict)
    t = tensorizer.TensorDeserializer(str(tmp_path / "pw.tensors"), device="cpu",
                                      encryption=tensorizer.DecryptionParams.from_string("hunter2"))
    assert torch.equal(t["a"], state_dict["a"])
    o = TensorDeserializer(str(tmp_path / "pw.tensors"), encryption=DecryptionParams.from_string("hunter2"))
    assert torch.equal(o["c"], state_dict["c"])


def test_errors_are_the_python_librarys_classes(tmp_path, state_dict):
    key = EncryptionParams.random()
    with TensorSerializer(str(tmp_path / "enc.tensors"), encryption=key) as s:
        s.write_state_dict(state_dict)
    with pytest.raises(tensorizer_rs.CryptographyError, match="decryption failed"):
        TensorDeserializer(str(tmp_path / "enc.tensors"), encryption=DecryptionParams.from_key(b"\0" * 32))
    with pytest.raises(OSError, match="nope.tensors"):
        TensorDeserializer(str(tmp_path / "nope.tensors"))
    data = bytearray((tmp_path / "enc.tensors").read_bytes())
    with TensorSerializer(str(tmp_path / "plain.tensors")) as s:
        s.write_state_dict(state_dict)
    data = bytearray((tmp_path / "plain.tensors").read_bytes())
    data[-20] ^= 0xFF  # inside the last tensor's data
    (tmp_path / "bad.tensors").write_bytes(bytes(data))
    with pytest.raises(tensorizer_rs.HashMismatchError, match="verification"):
        TensorDeserializer(str(tmp_path / "bad.tensors"), verify_hash=True)


def test_tensors_outlive_the_deserializer(tmp_path, state_dict):
    with TensorSerializer(str(tmp_path / "m.tensors")) as s:
        s.write_state_dict(state_dict)
    d = TensorDeserializer(str(tmp_path / "m.tensors"))
    a = d["a"]
    d.close()
    del d
    gc.collect()
    assert torch.equal(a, state_dict["a"])


def test_lazy_and_filtered(tmp_path, state_dict):
    with TensorSerializer(str(tmp_path / "m.tensors")) as s:
        s.write_state_dict(state_dict)
    d = TensorDeserializer(str(tmp_path / "m.tensors"), lazy_load=True, filter_func=lambda n: n in ("a", "b"))
    assert list(d.keys()) == ["a", "b"]
    assert torch.equal(d["b"], state_dict["b"])
    assert d.total_tensor_bytes == 3 * 4 * 4 + 10 * 8


def _python(code, **env):
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, **env})
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_install_as_tensorizer():
    # In a subprocess: the alias changes what `import tensorizer` means for
    # the whole process.
    out = _python(
        "import tensorizer_rs; tensorizer_rs.install_as_tensorizer()\n"
        "import tensorizer, tensorizer.serialization, tensorizer._crypt, tensorizer._syscalls\n"
        "from tensorizer.stream_io import open_stream\n"
        "from tensorizer.serialization import TensorHash, TensorType\n"
        "import tensorizer.torch_compat as tc\n"
        "assert tensorizer is tensorizer_rs\n"
        "assert tensorizer.serialization is tensorizer_rs.serialization\n"
        "assert tc is tensorizer_rs.torch_compat and tensorizer._crypt.available\n"
        "print(tensorizer.TensorDeserializer.__module__)\n")
    assert out.strip() == "tensorizer_rs.serialization"


def test_zero_code_activation_by_environment():
    code = "import tensorizer; print(tensorizer.__name__, tensorizer.__file__)"
    name, where = _python(code, TENSORIZER_RS="1").split()
    assert name == "tensorizer_rs" and "tensorizer_rs" in where
    name, where = _python(code, TENSORIZER_RS="0").split()
    assert name == "tensorizer" and "tensorizer_rs" not in where
    env = {k: v for k, v in os.environ.items() if k != "TENSORIZER_RS"}
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.split()[0] == "tensorizer"
    # The hook itself imports neither torch nor tensorizer_rs at start-up.
    out = _python("import sys; print('torch' in sys.modules, 'tensorizer_rs' in sys.modules)",
                  TENSORIZER_RS="1")
    assert out.split() == ["False", "False"]


class _Server:
    """A loopback HTTP server with Range support that counts bytes served."""

    def __init__(self, data: bytes):
        import http.server
        import threading
        served = self.served = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _range(self):
                r = self.headers.get("Range")
                if not r:
                    return 0, len(data)
                a, b = r.split("=", 1)[1].split("-")
                return int(a), min(len(data), int(b) + 1 if b else len(data))

            def do_HEAD(self):
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()

            def do_GET(self):
                start, end = self._range()
                partial = "Range" in self.headers
                self.send_response(206 if partial else 200)
                if partial:
                    self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
                self.send_header("Content-Length", str(end - start))
                self.end_headers()
                served.append(end - start)
                self.wfile.write(data[start:end])

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/m.tensors"

    def close(self):
        self.httpd.shutdown()


def test_lazy_filtered_loads_read_only_what_they_need(tmp_path):
    big = {"a": torch.ones(1 << 20), "b": torch.full((1 << 20,), 2.0), "small": torch.arange(4)}
    with TensorSerializer(str(tmp_path / "m.tensors")) as s:
        s.write_state_dict(big)
    server = _Server((tmp_path / "m.tensors").read_bytes())
    try:
        d = TensorDeserializer(server.url, lazy_load=True)
        assert torch.equal(d["small"], big["small"])
        # The header, the index (its 256 KiB reservation) and "small": not a or b (4 MiB each).
        assert sum(server.served) < (1 << 20), server.served
        before = sum(server.served)
        filtered = TensorDeserializer(server.url, filter_func=lambda n: n == "b")
        assert torch.equal(filtered["b"], big["b"])
        assert list(filtered.keys()) == ["b"]
    finally:
        server.close()
    # The eager filtered load read b (4 MiB) and the index, never a.
    assert sum(server.served) < 2 * (4 << 20), sum(server.served)
    assert sum(server.served) - before >= 4 << 20


def test_stream_io_streams_are_accepted(tmp_path, state_dict):
    from tensorizer_rs.stream_io import open_stream
    with TensorSerializer(open_stream(str(tmp_path / "m.tensors"), "wb+")) as s:
        s.write_state_dict(state_dict)
    with open_stream(str(tmp_path / "m.tensors")) as f:
        assert f.read(5) == b"|TZR|"
    d = TensorDeserializer(open_stream(str(tmp_path / "m.tensors")))
    assert torch.equal(d["a"], state_dict["a"])


def _rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_a_thousand_loads_and_errors_leak_nothing(tmp_path, state_dict):
    with TensorSerializer(str(tmp_path / "m.tensors")) as s:
        s.write_state_dict({"w": torch.randn(256, 256)})
    key = EncryptionParams.random()
    with TensorSerializer(str(tmp_path / "e.tensors"), encryption=key) as s:
        s.write_state_dict({"w": torch.randn(64)})
    wrong = DecryptionParams.from_key(b"\1" * 32)

    def round():
        t = TensorDeserializer(str(tmp_path / "m.tensors"))["w"]
        assert t.shape == (256, 256)
        for bad in (lambda: TensorDeserializer(str(tmp_path / "e.tensors"), encryption=wrong),
                    lambda: TensorDeserializer(str(tmp_path / "missing.tensors"))):
            try:
                bad()
            except (tensorizer_rs.CryptographyError, OSError):
                pass
            else:
                raise AssertionError("expected an error")

    for _ in range(50):
        round()
    gc.collect()
    start = _rss()
    for _ in range(1000):
        round()
    gc.collect()
    grown = _rss() - start
    # Each load allocates 256 KiB; a leak would grow by ~256 MiB.
    assert grown < (16 << 20), f"RSS grew by {grown >> 20} MiB over 1000 loads"


def encrypted_fixtures():
    manifest = json.loads((FIXTURES / "manifest.json").read_text())
    return [f["file"] for f in manifest["fixtures"] if not f["must_fail"] and f["encryption"] is not None]


@pytest.mark.parametrize("name", encrypted_fixtures())
def test_every_encrypted_fixture_loads_as_python_loads_it(name):
    path = FIXTURES / name
    key, passphrase = path.with_suffix(".key"), path.with_suffix(".passphrase")
    if key.exists():
        ours_params = DecryptionParams.from_key(_key_bytes(key))
        theirs_params = tensorizer.DecryptionParams.from_key(_key_bytes(key))
    else:
        ours_params = DecryptionParams.from_string(passphrase.read_bytes())
        theirs_params = tensorizer.DecryptionParams.from_string(passphrase.read_bytes())
    # Written by the real library: their meta tensors are trusted.
    ours = TensorDeserializer(str(path), encryption=ours_params, verify_hash=True,
                              allow_unauthenticated_meta=True)
    theirs = tensorizer.TensorDeserializer(str(path), device="cpu", encryption=theirs_params)
    for k in theirs.keys():
        same(ours[k], theirs[k], k)


def _key_bytes(path):
    data = path.read_bytes()
    return data if len(data) == 32 else bytes.fromhex(data.decode().strip())


def test_file_objects_in_and_out(tmp_path, state_dict):
    import io
    buf = io.BytesIO()
    buf.close = lambda: None  # the serializer closes it, as the library's does
    with TensorSerializer(buf) as s:
        s.write_state_dict(state_dict)
    p = tensorizer.TensorSerializer(str(tmp_path / "py.tensors"))
    p.write_state_dict(state_dict)
    p.close()
    assert buf.getvalue() == (tmp_path / "py.tensors").read_bytes()
    d = TensorDeserializer(io.BytesIO(buf.getvalue()))
    assert torch.equal(d["a"], state_dict["a"])
    with open(tmp_path / "py.tensors", "rb") as f:
        assert torch.equal(TensorDeserializer(f)["b"], state_dict["b"])


def test_numpy_arrays_without_torch(tmp_path, state_dict):
    import subprocess
    import sys
    with TensorSerializer(str(tmp_path / "m.tensors")) as s:
        s.write_state_dict(state_dict)
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np, tensorizer_rs\n"
        f"d = tensorizer_rs.TensorDeserializer({str(tmp_path / 'm.tensors')!r})\n"
        "a = d['a']; assert isinstance(a, np.ndarray) and a.dtype == np.float32 and a.shape == (3, 4)\n"
        "assert d['b'].tolist() == list(range(10))\n"
        "c = d['c']; assert c.dtype == np.uint8 and c.shape == (5, 2)  # bfloat16: raw bytes\n"
        "print(float(a[0, 0]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) == pytest.approx(float(state_dict["a"][0, 0]))


def test_utils_print_as_the_library_prints():
    import re
    import tensorizer.utils as theirs
    from tensorizer_rs import utils as ours
    for n in (0, 999, 1000, 1234567, 5e12, 1 << 30):
        for decimal in (True, False):
            assert ours.convert_bytes(n, decimal) == theirs.convert_bytes(n, decimal)
    assert re.fullmatch(r"CPU: \(maxrss: [\d,]+MiB F: [\d,]+MiB\)", ours.get_mem_usage())
    with ours.no_init_or_tensor():
        layer = torch.nn.Linear(1 << 14, 1 << 14)
    assert layer.weight.device.type == "meta"


# -- vLLM's call sequences and real streams ---------------------------------

def _module():
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Embedding(16, 8), torch.nn.Linear(8, 8),
                               torch.nn.LayerNorm(8))


def _library_bytes(tmp_path, module):
    p = tensorizer.TensorSerializer(str(tmp_path / "library.tensors"))
    p.write_module(module)
    p.close()
    return (tmp_path / "library.tensors").read_bytes()


def test_vllm_write_sequence_local(tmp_path):
    """serialize_vllm_model: `with open_stream(path, "wb+") as stream:
    TensorSerializer(stream) ... close()`; the stream's own close at the end
    of the block must not undo the serializer's bytes."""
    from tensorizer_rs.stream_io import open_stream
    m = _module()
    path = tmp_path / "vllm" / "model.tensors"
    with open_stream(str(path), "wb+") as stream:
        s = TensorSerializer(stream)
        s.write_module(m)
        s.close()
    assert path.read_bytes() == _library_bytes(tmp_path, m)


def test_serializer_into_a_file_object_it_does_not_own(tmp_path):
    import tempfile
    m = _module()
    f = tempfile.NamedTemporaryFile("wb+", dir=tmp_path, delete=False)
    f.write(b"")
    s = TensorSerializer(f)
    s.write_module(m)
    s.close()
    assert f.closed  # as the library closes it
    assert pathlib.Path(f.name).read_bytes() == _library_bytes(tmp_path, m)


def test_tensors_are_hashed_as_written(tmp_path):
    m = _module()
    s = TensorSerializer(str(tmp_path / "m.tensors"))
    s.write_module(m)
    s.close()
    d = TensorDeserializer(str(tmp_path / "m.tensors"), verify_hash=True)
    ok, results = d.verify_module(m)
    assert ok and len(results) == 5
    m[2].weight.data += 1
    ok, results = d.verify_module(m)
    assert not ok and dict(results)["2.weight"] is False


def _s3(endpoint):
    # The library refuses plain-http endpoints unless forced (so do we).
    return dict(s3_access_key_id="k", s3_secret_access_key="s", s3_endpoint=endpoint,
                force_http=True)


def test_vllm_write_sequence_s3_and_streams(tmp_path, moto_endpoint):
    from tensorizer_rs.stream_io import open_stream
    m = _module()
    uri = "s3://models/vllm/model/v1/model.tensors"
    with open_stream(uri, "wb+", **_s3(moto_endpoint)) as stream:
        s = TensorSerializer(stream)
        s.write_module(m)
        s.close()
    expected = _library_bytes(tmp_path, m)
    with open_stream(uri, "rb", **_s3(moto_endpoint)) as r:
        assert r.read() == expected
        # Real streams: seek, tell, ranges.
        r.seek(5)
        assert r.tell() == 5 and r.read(4) == expected[5:9]
        r.seek(-3, os.SEEK_END)
        assert r.read() == expected[-3:]
    # Bytes written by hand land too; an exception leaves the old object.
    with open_stream(uri, "wb", **_s3(moto_endpoint)) as w:
        w.write(b"hello ")
        w.write(memoryview(b"world"))
    with open_stream(uri, "rb", **_s3(moto_endpoint)) as r:
        assert r.read() == b"hello world"
    with pytest.raises(RuntimeError):
        with open_stream(uri, "wb", **_s3(moto_endpoint)) as w:
            w.write(b"half a file")
            raise RuntimeError("killed")
    with open_stream(uri, "rb", **_s3(moto_endpoint)) as r:
        assert r.read() == b"hello world"
    with pytest.raises(ValueError):  # "hello world" is no tensors file
        TensorDeserializer(open_stream(uri, **_s3(moto_endpoint)))

def test_reads_fetch_ranges_not_objects(tmp_path):
    from tensorizer_rs.stream_io import open_stream
    data = os.urandom(24 << 20)
    server = _Server(data)
    try:
        with open_stream(server.url) as s:
            assert s.read(5) == data[:5]
            s.seek(20 << 20)
            assert s.read(3) == data[20 << 20:(20 << 20) + 3]
            assert s.tell() == (20 << 20) + 3
    finally:
        server.close()
    assert sum(server.served) <= 2 * (4 << 20) + 1024, server.served


def test_requires_grad_and_dtype_as_the_library(tmp_path):
    sd = {"f": torch.randn(4), "i": torch.arange(4), "b": torch.tensor([True, False]),
          "h": torch.randn(2).half()}
    with TensorSerializer(str(tmp_path / "m.tensors")) as s:
        s.write_state_dict(sd)
    for dtype in (None, torch.float16, torch.float64):
        ours = TensorDeserializer(str(tmp_path / "m.tensors"), device="cpu", dtype=dtype)
        theirs = tensorizer.TensorDeserializer(str(tmp_path / "m.tensors"), device="cpu",
                                               dtype=dtype)
        for k in sd:
            assert ours[k].dtype == theirs[k].dtype, (k, dtype)
            assert ours[k].requires_grad == theirs[k].requires_grad, (k, dtype)
            assert torch.equal(ours[k], theirs[k])


def test_cpu_with_an_index_is_the_cpu(tmp_path, state_dict, recwarn):
    with TensorSerializer(str(tmp_path / "m.tensors")) as s:
        s.write_state_dict(state_dict)
    d = TensorDeserializer(str(tmp_path / "m.tensors"), device="cpu:0")
    assert d["a"].device.type == "cpu"
    assert not [w for w in recwarn if "CUDA" in str(w.message)]


def test_file_object_is_read_where_it_stands_never_by_name(tmp_path, state_dict, monkeypatch):
    import zipfile
    with TensorSerializer(str(tmp_path / "m.tensors")) as s:
        s.write_state_dict(state_dict)
    # A different model under the same name in the working directory.
    with TensorSerializer(str(tmp_path / "model.tensors")) as s:
        s.write_state_dict({"other": torch.zeros(1)})
    with zipfile.ZipFile(tmp_path / "z.zip", "w") as z:
        z.write(tmp_path / "m.tensors", "model.tensors")
    monkeypatch.chdir(tmp_path)
    with zipfile.ZipFile(tmp_path / "z.zip") as z, z.open("model.tensors") as member:
        d = TensorDeserializer(member)
        assert list(d.keys()) == list(state_dict.keys())
    # A file object positioned after a prefix is read from there.
    with open(tmp_path / "prefixed", "wb") as f:
        f.write(b"junk" * 3 + (tmp_path / "m.tensors").read_bytes())
    with open(tmp_path / "prefixed", "rb") as f:
        f.seek(12)
        assert torch.equal(TensorDeserializer(f)["a"], state_dict["a"])


def test_serializer_holds_tensors_as_they_were_at_the_call(tmp_path):
    """After write_tensor, resizing the tensor (its old memory freed) or
    changing it in place does not change what is written."""
    import numpy as np
    a = torch.arange(1 << 16, dtype=torch.float32)
    b = torch.ones(1000)
    c = np.arange(10, dtype=np.int64)
    s = TensorSerializer(str(tmp_path / "m.tensors"))
    s.write_tensor(0, "a", 2, a)
    s.write_tensor(0, "b", 2, b)
    s.write_tensor(0, "c", 2, c)
    expected_a = torch.arange(1 << 16, dtype=torch.float32)
    a.resize_(1 << 22)  # reallocates: the old buffer is freed
    a.fill_(7)
    b.mul_(3)
    c[:] = -1
    s.close()
    d = TensorDeserializer(str(tmp_path / "m.tensors"))
    assert torch.equal(d["a"], expected_a)
    assert torch.equal(d["b"], torch.ones(1000))
    assert d["c"].tolist() == list(range(10))


def test_native_writer_takes_no_addresses(tmp_path):
    from tensorizer_rs import _native
    w = _native.StreamWriter(uri=str(tmp_path / "m.tensors"))
    with pytest.raises(TypeError):
        w.add_batch([(0, "x", 2, "uint8", [8], 0xDEADBEEF)])
    with pytest.raises(TypeError):
        w.add_batch([(0, "x", 2, "uint8", [8], b"12345678")])
    assert len(w) == 0
    w.abort()
    assert not (tmp_path / "m.tensors").exists()


def test_open_stream_honours_its_s3_arguments(tmp_path, moto_endpoint):
    """s3_config_path, force_http and s3_region_name are used (they were
    silently ignored)."""
    from tensorizer_rs.stream_io import open_stream
    uri = "s3://models/cfg/m.bin"
    with open_stream(uri, "wb", **_s3(moto_endpoint)) as w:
        w.write(b"via config")
    host = moto_endpoint.split("://", 1)[1]
    cfg = tmp_path / "s3cfg"
    cfg.write_text(f"[default]\naccess_key = k\nsecret_key = s\nhost_base = {host}\nuse_https = False\n")
    with open_stream(uri, s3_config_path=str(cfg), s3_region_name="us-east-1") as r:
        assert r.read() == b"via config"
    with pytest.raises(FileNotFoundError):
        open_stream(uri, s3_config_path=str(tmp_path / "missing"))


def test_presigned_urls_are_signed_by_the_core(moto_endpoint, monkeypatch):
    """_s3_download_url (the library makes presigned GET URLs) signs with
    the core's SigV4 signer; an empty key gives the unsigned URL; the URL
    reads the object."""
    import urllib.request
    from tensorizer_rs import stream_io
    uri = "s3://models/presigned/m.bin"
    with stream_io.open_stream(uri, "wb", **_s3(moto_endpoint)) as w:
        w.write(b"presigned bytes")
    # The local server speaks http, as in the library's own test.
    monkeypatch.setattr(stream_io, "_ensure_https_endpoint", lambda endpoint: endpoint)
    url = stream_io._s3_download_url(uri, "k", "s", s3_endpoint=moto_endpoint)
    assert "models/presigned/m.bin?" in url and "X-Amz-Signature=" in url, url
    assert "X-Amz-Expires=3600" in url and "X-Amz-Credential=k" in url, url
    with urllib.request.urlopen(url) as r:
        assert r.read() == b"presigned bytes"
    plain = stream_io._s3_download_url(uri, "", "", s3_endpoint=moto_endpoint)
    assert plain.endswith("/models/presigned/m.bin") and "?" not in plain, plain


def test_certificate_handling_is_honoured(tmp_path):
    """CAInfo(cacert=...), CAInfo(capath=...) and CAInfo(allow_untrusted=True)
    reach the core's client; without them a private CA is refused."""
    import http.server
    import shutil
    import ssl
    import subprocess
    import threading
    from tensorizer_rs.stream_io import CAInfo, open_stream
    d = tmp_path

    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    (d / "ext.cnf").write_text("basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\n")
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=test CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf")
    (d / "www").mkdir()
    (d / "www" / "m.bin").write_bytes(b"over tls" * 1000)
    (d / "cas").mkdir()
    shutil.copy(d / "ca.pem", d / "cas" / "ca.pem")
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(d / "www"), **k)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(d / "server.pem", d / "server.key")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"https://127.0.0.1:{server.server_address[1]}/m.bin"
    try:
        with pytest.raises(OSError, match="Failed to open stream"):
            open_stream(url)
        for handling in (CAInfo(cacert=str(d / "ca.pem")), CAInfo(capath=str(d / "cas")),
                         CAInfo(allow_untrusted=True)):
            with open_stream(url, certificate_handling=handling) as s:
                assert s.read() == b"over tls" * 1000
    finally:
        server.shutdown()


def test_meta_tensors_of_encrypted_files_need_allowing(tmp_path):
    """Encryption authenticates data, not the index: a meta tensor of an
    encrypted file (zeros, which anyone can make of any tensor without the
    key) is refused unless named; vLLM's marker is allowed by default."""
    key = DecryptionParams.from_key(b"k" * 32)
    path = tmp_path / "m.tensors"
    s = TensorSerializer(str(path), encryption=EncryptionParams(b"k" * 32))
    s.write_tensor(0, ".vllm_tensorized_marker", 0, torch.empty(1, dtype=torch.int64, device="meta"))
    s.write_tensor(0, "w", 2, torch.arange(4.0))
    s.close()
    d = TensorDeserializer(str(path), encryption=key)
    assert torch.equal(d["w"], torch.arange(4.0))
    s = TensorSerializer(str(path), encryption=EncryptionParams(b"k" * 32))
    s.write_tensor(0, "ghost", 2, torch.empty(4, device="meta"))
    s.write_tensor(0, "w", 2, torch.arange(4.0))
    s.close()
    with pytest.raises(Exception, match="meta tensor"):
        TensorDeserializer(str(path), encryption=key)["ghost"]
    for allowed in (["ghost"], True):
        d = TensorDeserializer(str(path), encryption=key, allow_unauthenticated_meta=allowed)
        assert torch.equal(d["ghost"], torch.zeros(4))


def test_native_writer_writes_at_the_call(tmp_path):
    """The native writer once kept the producer's capsule until write(): a
    resize in between freed the bytes it then read (exit 139). Now the
    bytes are in the file when add_batch returns, the capsule released."""
    from tensorizer_rs import _native
    u = torch.arange(1 << 16, dtype=torch.uint8)
    expected = u.clone()
    path = tmp_path / "m.tensors"
    w = _native.StreamWriter(uri=str(path))
    w.add_batch([(0, "u", 2, "uint8", [1 << 16], u.__dlpack__())])
    assert (len(w), w.data_bytes()) == (1, 1 << 16)
    u.resize_(64 << 20)  # reallocates: the old buffer is freed
    u.fill_(7)
    assert not path.exists(), "the file appears whole at close"
    size = w.close()
    assert path.stat().st_size == size
    assert torch.equal(TensorDeserializer(str(path))["u"], expected)


def test_serializer_streams_each_call(tmp_path):
    """Each call's tensors reach the sink before it returns: the temporary
    file grows call by call while the destination keeps its old content;
    a module is refused whole when its index entries overflow (the
    library's RuntimeError), and the writer goes on."""
    path = tmp_path / "m.tensors"
    path.write_bytes(b"previous")

    def staged_sizes():
        # The new bytes wait in an unnamed file (O_TMPFILE) of the
        # destination's directory: seen only through this process's fds.
        sizes = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if target.startswith(str(tmp_path)) and target.endswith("(deleted)"):
                sizes.append(os.stat(f"/proc/self/fd/{fd}").st_size)
        return sizes

    s = TensorSerializer(str(path))
    sizes = []
    for i in range(3):
        s.write_tensor(0, f"t{i}", 2, torch.full((1 << 18,), float(i)))
        staged = staged_sizes()
        assert len(staged) == 1, staged
        assert os.listdir(tmp_path) == ["m.tensors"]
        sizes.append(staged[0])
    assert sizes[0] < sizes[1] < sizes[2], sizes
    assert sizes[2] >= 3 * (1 << 20)
    assert path.read_bytes() == b"previous"
    long = "x" * 4000
    big = torch.nn.Module()
    for i in range(100):
        big.register_buffer(f"{long}{i}", torch.zeros(1))
    with pytest.raises(RuntimeError, match="Metadata overflow"):
        s.write_module(big)
    s.write_tensor(0, "after", 2, torch.ones(3))
    s.close()
    d = TensorDeserializer(str(path))
    assert sorted(d.keys()) == ["after", "t0", "t1", "t2"]
    assert torch.equal(d["t2"], torch.full((1 << 18,), 2.0))
    assert os.listdir(tmp_path) == ["m.tensors"]
    assert staged_sizes() == []


def test_an_abandoned_serializer_leaves_the_previous_file(tmp_path):
    path = tmp_path / "m.tensors"
    path.write_bytes(b"previous")
    with pytest.raises(KeyError):
        with TensorSerializer(str(path)) as s:
            s.write_tensor(0, "a", 2, torch.ones(1 << 20))
            raise KeyError("the caller fails mid-write")
    assert path.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["m.tensors"]


def test_file_objects_are_used_by_descriptor_only_when_plain(tmp_path, state_dict):
    """A read-only file is not written through its descriptor (the library
    raises io.UnsupportedOperation); a gzip file's descriptor is the
    compressed file's, so its bytes are read through the object."""
    import gzip
    import io
    path = tmp_path / "m.tensors"
    with TensorSerializer(str(path)) as s:
        s.write_state_dict(state_dict)
    before = path.read_bytes()
    with open(path, "rb") as f, pytest.raises(io.UnsupportedOperation):
        TensorSerializer(f)
    assert path.read_bytes() == before, "the read-only file was overwritten"
    with gzip.open(tmp_path / "m.tensors.gz", "wb") as g:
        g.write(before)
    with gzip.open(tmp_path / "m.tensors.gz", "rb") as g:
        d = TensorDeserializer(g)
        assert torch.equal(d["a"], state_dict["a"])
    # Plain files still go through their descriptor, in place.
    with open(path, "rb") as f:
        assert torch.equal(TensorDeserializer(f)["b"], state_dict["b"])
    with open(tmp_path / "out.tensors", "w+b") as f:
        with TensorSerializer(f) as s:
            s.write_state_dict(state_dict)
    assert (tmp_path / "out.tensors").read_bytes() == before


def test_a_tensor_asked_for_twice_is_refused(tmp_path, state_dict):
    from tensorizer_rs import _native
    path = tmp_path / "m.tensors"
    with TensorSerializer(str(path)) as s:
        s.write_state_dict(state_dict)
    r = _native.Reader(str(path))
    with pytest.raises(ValueError, match="asked for twice"):
        r.read([0, 0], False)


def test_a_stream_read_grows_with_the_bytes_that_arrive(tmp_path):
    """stream.read() of a server claiming 3 GiB that sends a few bytes
    allocated the claim (3.4 GB RSS); it now costs what arrived."""
    import socket
    import threading
    from tensorizer_rs.stream_io import open_stream
    claimed = 3 << 30
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    port = srv.getsockname()[1]

    def serve():
        for _ in range(16):
            try:
                con, _ = srv.accept()
            except OSError:
                return
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = con.recv(4096)
                if not chunk:
                    break
                data += chunk
            rng = [l for l in data.decode().lower().split("\r\n") if l.startswith("range:")]
            a, b = (int(x) for x in rng[0].split("=")[1].split("-")) if rng else (0, claimed - 1)
            con.sendall(f"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {a}-{b}/{claimed}\r\n"
                        f"Content-Length: {b - a + 1}\r\nConnection: close\r\n\r\n".encode()
                        + b"x" * min(4096, b - a + 1))
            con.close()

    import resource
    threading.Thread(target=serve, daemon=True).start()
    peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10
    before = peak()
    with pytest.raises(Exception):
        open_stream(f"http://127.0.0.1:{port}/m.tensors").read()
    assert peak() - before < (64 << 20), f"peak RSS grew by {(peak() - before) >> 20} MiB"
    srv.close()


MEMORY_LIMITED_WRITER = '''
import os, resource, sys
import torch
from tensorizer_rs import TensorSerializer, TensorType


def field(name):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) << 10 for l in f if l.startswith(name))


# Address space: what the imports mapped, plus HEADROOM.
limit = field("VmSize:") + int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
base = field("VmRSS:")
buf = torch.empty(int(sys.argv[3]) // 4, dtype=torch.float32)
s = TensorSerializer(sys.argv[1])
for i in range(int(sys.argv[4])):
    buf.fill_(float(i))
    s.write_tensor(0, f"layers.{i:02}.weight", TensorType.PARAM, buf)
s.close()
print("peak", field("VmHWM:") - base)
'''


def test_a_model_four_times_the_memory_limit_streams_from_python(tmp_path):
    """64 tensors of 32 MiB (2 GiB) written from one reused buffer by a
    process whose address space may grow by 512 MiB after its imports: the
    writer holds no tensor past its call (host memory: the caller's tensor
    plus fixed staging)."""
    tensor, count, headroom = 32 << 20, 64, 512 << 20
    out = tmp_path / "m.tensors"
    env = dict(os.environ, MALLOC_ARENA_MAX="2")
    run = subprocess.run(
        [sys.executable, "-c", MEMORY_LIMITED_WRITER, str(out), str(headroom), str(tensor),
         str(count)],
        capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr
    peak = int(run.stdout.split()[-1])
    print(f"peak RSS {peak >> 20} MiB above the baseline")
    assert peak <= tensor + (128 << 20), peak
    assert out.stat().st_size > count * tensor
    d = TensorDeserializer(str(out), lazy_load=True, verify_hash=True)
    assert len(d) == count
    for i in range(count):
        t = d[f"layers.{i:02}.weight"]
        assert t.numel() == tensor // 4
        assert bool((t == float(i)).all()), i
        del t
    d.close()
