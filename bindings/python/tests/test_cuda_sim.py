"""tensorizer_rs straight to the device, on the simulated CUDA driver
(`crates/tensorizer-cuda-sim`): the core's engine loads the tensors (pinned
staging ring, several streams, verification and decryption on the way) and
hands each to Python as a `kDLCUDA` DLPack capsule over the device arena.

CPU torch cannot import a CUDA capsule, so the capsules are checked as
they are (device type and ordinal, a pointer inside a live simulated
allocation, the bytes read back through the driver equal to the file's),
and the `TensorDeserializer(device="cuda:0")` path runs with torch's
importer replaced by one that checks the same and rebuilds the tensor from
the device's bytes. Each scenario runs in a subprocess of its own: the
simulated driver is loaded before tensorizer_rs touches CUDA, and the
other tests keep a process without a driver.

Needs TENSORIZER_CUDA_SIM (the path of libtensorizer_cuda_sim.so), which
`cargo xtask python-test` sets after building it.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from tensorizer_rs import DecryptionParams, EncryptionParams, TensorSerializer

PRELUDE = textwrap.dedent('''
    import ctypes, gc, math, os, sys
    sim = ctypes.CDLL(os.environ["TENSORIZER_CUDA_SIM"], mode=os.RTLD_GLOBAL | os.RTLD_NOW)
    import torch
    import tensorizer_rs
    from tensorizer_rs import _native

    FIELDS = ("live_device_allocations", "live_device_bytes", "peak_device_bytes",
              "live_pinned_allocations", "pinned_bytes", "peak_pinned_bytes", "h2d_copies",
              "h2d_bytes", "live_streams", "live_events", "retained_contexts", "violations",
              "devices_used")

    class Stats(ctypes.Structure):
        _fields_ = [(f, ctypes.c_uint64) for f in FIELDS]

    def stats():
        s = Stats()
        sim.tsim_stats(ctypes.byref(s))
        return s

    def violations():
        sim.tsim_violation.restype = ctypes.c_int64
        sim.tsim_violation.argtypes = [ctypes.c_uint64, ctypes.c_char_p, ctypes.c_size_t]
        out, i = [], 0
        while True:
            buf = ctypes.create_string_buffer(4096)
            n = sim.tsim_violation(i, buf, 4096)
            if n < 0:
                return out
            out.append(buf.raw[:n].decode())
            i += 1

    sim.tsim_device_of.restype = ctypes.c_int32
    sim.tsim_device_of.argtypes = [ctypes.c_uint64]
    sim.tsim_read_device.restype = ctypes.c_uint32
    sim.tsim_read_device.argtypes = [ctypes.c_uint64, ctypes.c_void_p, ctypes.c_size_t]

    class DLDevice(ctypes.Structure):
        _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]

    class DLDataType(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]

    class DLTensor(ctypes.Structure):
        _fields_ = [("data", ctypes.c_void_p), ("device", DLDevice), ("ndim", ctypes.c_int32),
                    ("dtype", DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                    ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]

    class DLManagedTensor(ctypes.Structure):
        _fields_ = [("dl_tensor", DLTensor), ("manager_ctx", ctypes.c_void_p),
                    ("deleter", ctypes.c_void_p)]

    _get = ctypes.pythonapi.PyCapsule_GetPointer
    _get.restype = ctypes.c_void_p
    _get.argtypes = [ctypes.py_object, ctypes.c_char_p]

    def inspect(capsule):
        """(device type, ordinal, pointer, shape, bytes, (code, bits)) of a capsule."""
        t = DLManagedTensor.from_address(_get(capsule, b"dltensor")).dl_tensor
        shape = [t.shape[i] for i in range(t.ndim)]
        nbytes = math.prod(shape) * t.dtype.bits // 8
        return (t.device.device_type, t.device.device_id, t.data or 0, shape, nbytes,
                (t.dtype.code, t.dtype.bits))

    def device_bytes(ptr, n):
        if n == 0:
            return b""
        buf = ctypes.create_string_buffer(n)
        assert sim.tsim_read_device(ptr, buf, n) == 0, "read outside a live allocation"
        return buf.raw

    def host_bytes(capsule):
        t = torch.utils.dlpack.from_dlpack(capsule)
        return bytes(t.reshape(-1).view(torch.uint8).numpy()) if t.numel() else b""

    def check_capsule(capsule, ordinal, want):
        kind, dev, ptr, shape, nbytes, _ = inspect(capsule)
        assert (kind, dev) == (2, ordinal), (kind, dev)  # kDLCUDA on the ordinal asked for
        if nbytes:
            assert sim.tsim_device_of(ptr) == ordinal, hex(ptr)
        assert device_bytes(ptr, nbytes) == want

    DTYPES = {(2, 32): torch.float32, (4, 16): torch.bfloat16, (2, 16): torch.float16,
              (0, 64): torch.int64, (1, 8): torch.uint8, (6, 8): torch.bool}

    def from_cuda_capsule(capsule, imported):
        """CPU torch's stand-in for importing a kDLCUDA capsule: checks it
        is on device 0 inside a live allocation, records its pointer in
        `imported`, rebuilds the tensor from the device's bytes."""
        kind, dev, ptr, shape, nbytes, code = inspect(capsule)
        assert (kind, dev) == (2, 0), (kind, dev)
        if nbytes:
            assert sim.tsim_device_of(ptr) == 0
        imported.append(ptr)
        data = bytearray(device_bytes(ptr, nbytes))
        if not data:
            return torch.empty(shape, dtype=DTYPES[code])
        return torch.frombuffer(data, dtype=DTYPES[code]).reshape(shape)
''')


def sim_path():
    path = os.environ.get("TENSORIZER_CUDA_SIM")
    if not path or not os.path.isfile(path):
        pytest.fail(
            "TENSORIZER_CUDA_SIM must name the simulated CUDA driver: build it with "
            "`cargo build -p tensorizer-cuda-sim` (target/debug/libtensorizer_cuda_sim.so) "
            "or run `cargo xtask python-test`, which does both")
    return path


def run(script, *args, env=None):
    r = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(script), *map(str, args)],
        env={**os.environ, "TENSORIZER_CUDA_SIM": sim_path(), **(env or {})},
        capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    return r.stdout


def state_dict():
    g = torch.Generator().manual_seed(5)
    return {
        "w.f32": torch.randn(300, 700, generator=g),
        "w.bf16": torch.randn(1024, 33, generator=g).to(torch.bfloat16),
        "w.f16": torch.randn(17, generator=g).to(torch.float16),
        "marker": torch.tensor([1, 2, 3], dtype=torch.int64),
        "flags": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
        # Larger than a 64 MiB staging buffer: uploaded in pieces.
        "big": torch.arange(18 << 20, dtype=torch.float32),
    }


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cuda")
    plain, enc = d / "plain.tensors", d / "enc.tensors"
    s = TensorSerializer(str(plain))
    s.write_state_dict(state_dict())
    s.close()
    params = EncryptionParams.random()
    s = TensorSerializer(str(enc), encryption=params)
    s.write_state_dict(state_dict())
    s.close()
    key = d / "key"
    key.write_bytes(params.key)
    return plain, enc, key


def test_capsules_point_into_live_device_memory_with_the_files_bytes(files):
    plain, enc, key = files
    out = run('''
        plain, enc, key = sys.argv[1:4]
        assert _native.cuda_devices() == 1
        for path, k in ((plain, None), (enc, open(key, "rb").read())):
            r = _native.Reader(path, key=k, verify_hash=True)
            n = len(r)
            want = [host_bytes(c) for c in r.read(list(range(n)), raw=True)]
            caps = r.read_cuda(list(range(n)), 0)
            assert len(caps) == n
            for c, w in zip(caps, want):
                check_capsule(c, 0, w)
            s = stats()
            assert s.live_device_allocations == 1, "one arena for the model"
            assert s.peak_pinned_bytes <= 4 * (64 << 20), s.peak_pinned_bytes
            # The arena lives while any capsule does.
            last = caps[-1]
            del caps, c
            gc.collect()
            assert stats().live_device_allocations == 1
            check_capsule(last, 0, want[-1])
            del last
            gc.collect()
            s = stats()
            assert (s.live_device_allocations, s.live_pinned_allocations,
                    s.retained_contexts) == (0, 0, 0), [(f, getattr(s, f)) for f in FIELDS]
        assert violations() == [], violations()
        print("checked", n)
    ''', plain, enc, key)
    assert "checked 8" in out


def test_a_lazy_load_pins_staging_sized_to_the_tensor(files):
    plain, _, _ = files
    run('''
        r = _native.Reader(sys.argv[1])
        names = [row[0] for row in r.entries()]
        small = names.index("w.f16")
        c = r.read_cuda([small], 0)[0]
        s = stats()
        # One 1 MiB buffer for a 34-byte tensor, not the 4 x 64 MiB ring.
        assert s.peak_pinned_bytes == 1 << 20, s.peak_pinned_bytes
        kind, dev, ptr, shape, nbytes, _ = inspect(c)
        assert (kind, shape, nbytes) == (2, [17], 34)
        del c
        gc.collect()
        assert stats().live_device_allocations == 0
        assert violations() == []
    ''', plain)


def test_a_wrong_key_fails_and_leaves_no_device_memory(files):
    _, enc, _ = files
    run('''
        r = _native.Reader(sys.argv[1], key=bytes(32))
        try:
            r.read_cuda(list(range(len(r))), 0)
        except Exception as e:
            assert "decrypt" in str(e).lower() or "authentic" in str(e).lower(), e
        else:
            raise AssertionError("a wrong key loaded")
        gc.collect()
        s = stats()
        assert (s.live_device_allocations, s.live_pinned_allocations, s.retained_contexts) == (0, 0, 0)
        assert violations() == [], violations()
    ''', enc)


def test_tensor_deserializer_to_cuda_goes_through_the_engine(files):
    plain, enc, key = files
    run('''
        plain, enc, key = sys.argv[1:4]
        from tensorizer_rs import TensorDeserializer, DecryptionParams
        from tensorizer_rs import serialization
        # CPU torch: pretend CUDA is there, and import CUDA capsules by
        # checking them and rebuilding the tensor from the device's bytes.
        torch.cuda.is_available = lambda: True
        torch.cuda.current_device = lambda: 0
        imported = []

        torch.utils.dlpack.from_dlpack = lambda c: from_cuda_capsule(c, imported)
        real = {}
        for path, k in ((plain, None), (enc, open(key, "rb").read())):
            enc_params = DecryptionParams.from_key(k) if k else None
            import warnings
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # the engine path warns of no host copy
                d = TensorDeserializer(path, device="cuda:0", encryption=enc_params,
                                       verify_hash=True)
            assert d._device == torch.device("cuda", 0)
            got = {name: d[name] for name in d.keys()}
            assert len(imported) >= 8
            imported.clear()
            for name, t in got.items():
                assert isinstance(t, torch.nn.Parameter), name
                real.setdefault(name, t)
                assert t.dtype == real[name].dtype and t.shape == real[name].shape, name
                a = t.detach().reshape(-1).view(torch.uint8) if t.numel() else t
                b = real[name].detach().reshape(-1).view(torch.uint8) if t.numel() else t
                assert torch.equal(a, b), name
            assert got["w.f32"].requires_grad and not got["marker"].requires_grad
            # bool has no DLPack code here: it travels as raw bytes, viewed back.
            assert got["flags"].dtype == torch.bool
            d.close()
            del d, got
            gc.collect()
        s = stats()
        assert (s.live_device_allocations, s.retained_contexts) == (0, 0), \
            [(f, getattr(s, f)) for f in FIELDS]
        assert violations() == [], violations()
    ''', plain, enc, key)


def test_load_into_module_on_cuda_goes_through_the_engine(tmp_path):
    path = tmp_path / "module.tensors"
    m = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.LayerNorm(32))
    s = TensorSerializer(str(path))
    s.write_module(m)
    s.close()
    torch.save(m.state_dict(), tmp_path / "want.pt")
    run('''
        from tensorizer_rs import TensorDeserializer
        torch.cuda.is_available = lambda: True
        torch.cuda.current_device = lambda: 0
        DTYPES = {(2, 32): torch.float32}

        def from_cuda_capsule(capsule):
            kind, dev, ptr, shape, nbytes, code = inspect(capsule)
            assert kind == 2
            return torch.frombuffer(bytearray(device_bytes(ptr, nbytes)),
                                    dtype=DTYPES[code]).reshape(shape)

        torch.utils.dlpack.from_dlpack = from_cuda_capsule
        want = torch.load(sys.argv[2])
        m = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.LayerNorm(32))
        d = TensorDeserializer(sys.argv[1], device="cuda:0")
        assert d.load_into_module(m) == 4
        for k, v in m.state_dict().items():
            assert torch.equal(v, want[k]), k
        assert violations() == []
    ''', path, tmp_path / "want.pt")


def test_without_a_driver_it_falls_back_to_host_memory_with_one_warning(files):
    plain, _, _ = files
    # No simulator loaded: this machine has no driver, so the engine is off.
    code = textwrap.dedent('''
        import sys, warnings, torch
        from tensorizer_rs import TensorDeserializer, _native
        assert _native.cuda_devices() == 0
        torch.cuda.is_available = lambda: True
        torch.cuda.current_device = lambda: 0
        moved = []
        torch.Tensor.to = lambda self, *a, **k: (moved.append(k.get("device")), self)[1]
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            d = TensorDeserializer(sys.argv[1], device="cuda:0")
            _ = [d[k] for k in d.keys()]
        msgs = [str(x.message) for x in w if "CUDA engine" in str(x.message)]
        assert len(msgs) == 1, msgs
        assert moved and all(str(m) == "cuda:0" for m in moved), moved
    ''')
    if os.path.exists("/dev/nvidiactl"):
        pytest.skip("a real CUDA driver is present: the no-driver fallback cannot be shown here")
    r = subprocess.run([sys.executable, "-c", code, str(plain)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


def test_runai_streamer_to_cuda_goes_through_the_engine(tmp_path):
    from safetensors.torch import save_file
    path = tmp_path / "model.safetensors"
    tensors = {k: v for k, v in state_dict().items() if k not in ("scalar", "big")}
    save_file(tensors, str(path))
    torch.save(tensors, tmp_path / "want.pt")
    out = run('''
        from tensorizer_rs.runai_model_streamer import SafetensorsStreamer
        imported = []

        torch.utils.dlpack.from_dlpack = lambda c: from_cuda_capsule(c, imported)
        want = torch.load(sys.argv[2])
        with SafetensorsStreamer() as s:
            s.stream_file(sys.argv[1], device="cuda:0")
            got = dict(s.get_tensors())
        assert len(imported) == len(want), (len(imported), len(want))
        for name, t in want.items():
            assert got[name].dtype == t.dtype and got[name].shape == t.shape, name
            assert torch.equal(got[name], t), name
        gc.collect()
        s = stats()
        assert (s.live_device_allocations, s.retained_contexts) == (0, 0), \\
            [(f, getattr(s, f)) for f in FIELDS]
        assert violations() == [], violations()
        print("loaded", len(got))
    ''', path, tmp_path / "want.pt")
    assert "loaded 6" in out


def test_device_tensors_are_written_through_the_staging_ring(files, tmp_path):
    """`StreamWriter.add_device` (what `TensorSerializer` calls for a CUDA
    tensor): the core copies each tensor back through its 4 × 8 MiB pinned
    ring, and the file is the host writer's, byte for byte. A copy failing
    mid-tensor leaves the previous file, no debris and no pinned memory."""
    from tensorizer_rs.serialization import _torch_name
    plain, _, _ = files
    specs = [(name, _torch_name(t), list(t.shape)) for name, t in state_dict().items()]
    out = tmp_path / "from-device.tensors"
    run('''
        import json
        plain, out, specs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
        r = _native.Reader(plain, verify_hash=True)
        caps = r.read_cuda(list(range(len(r))), 0)

        def write(fail_at=None):
            w = _native.StreamWriter(uri=out)
            try:
                for (name, dtype, shape), c in zip(specs, caps):
                    w.add_device(0, name, 2, dtype, shape, c)
                    # The ring, and no more: 4 buffers of 8 MiB.
                    assert stats().pinned_bytes == 4 * (8 << 20), stats().pinned_bytes
                    if fail_at is not None:
                        sim.tsim_fail_copy_at(fail_at)
                        fail_at = None
                w.close()
            except BaseException:
                w.abort()
                raise

        write()
        assert open(out, "rb").read() == open(plain, "rb").read()
        assert stats().live_pinned_allocations == 0, "the ring is freed at close"

        # Fresh capsules (a consumed capsule cannot be handed over twice).
        caps = r.read_cuda(list(range(len(r))), 0)
        try:
            # The 8th copy from the second tensor on: the 3rd piece of "big".
            write(fail_at=8)
            raise AssertionError("the failed copy was not reported")
        except (OSError, ValueError) as e:
            assert "device-to-host copy" in str(e), e
        assert open(out, "rb").read() == open(plain, "rb").read()
        assert sorted(os.listdir(os.path.dirname(out))) == ["from-device.tensors"]
        assert stats().live_pinned_allocations == 0
        assert violations() == [], violations()

        # A host capsule is not a device tensor.
        w = _native.StreamWriter(uri=out + ".cpu")
        try:
            w.add_device(0, "x", 2, "float32", [2], torch.zeros(2).__dlpack__())
            raise AssertionError("a CPU capsule was taken for a device tensor")
        except ValueError as e:
            assert "kDLCUDA" in str(e), e
        w.abort()
        print("ok")
    ''', plain, out, json.dumps(specs))
