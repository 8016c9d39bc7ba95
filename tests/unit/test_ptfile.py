"""Tests for layerwise.layerfile.ptfile: streamed, append-only torch.save-compatible files."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from layerwise.layerfile import ptfile
from layerwise.layerfile.ptfile import PtFileError, PtFileWriter, TensorSlot

N, T, H = 3, 5, 8


def sha256_file(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def zip_call(path, fn):
    with zipfile.ZipFile(path) as z:
        return fn(z)


def assert_same(got, want, where="root"):
    assert type(got) is type(want) or (isinstance(got, dict) and isinstance(want, dict)), where
    if isinstance(want, torch.Tensor):
        assert got.dtype == want.dtype, where
        assert got.shape == want.shape, where
        assert got.is_contiguous(), where
        assert byte_view(got) == byte_view(want), where
        if want.dtype not in (torch.float8_e4m3fn, torch.uint16):  # torch.equal lacks kernels for these
            assert torch.equal(got, want), where
    elif isinstance(want, dict):
        assert list(got.keys()) == list(want.keys()), where
        for k in want:
            assert_same(got[k], want[k], f"{where}[{k!r}]")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same(g, w, f"{where}[{i}]")
    else:
        assert got == want and type(got) is type(want), where


def assert_loads(path, real):
    for mmap in (False, True):
        loaded = torch.load(path, weights_only=True, mmap=mmap)
        assert_same(loaded, real)


def slots_of(real):
    """Same structure with every tensor replaced by a TensorSlot."""
    if isinstance(real, torch.Tensor):
        return TensorSlot(real.shape, real.dtype)
    if isinstance(real, dict):
        return {k: slots_of(v) for k, v in real.items()}
    if isinstance(real, list):
        return [slots_of(v) for v in real]
    return real


def byte_view(t: torch.Tensor) -> bytes:
    return t.reshape(-1).view(torch.uint8).numpy().tobytes()


def assert_names_match_torch_save(tmp_path, path, real):
    ref = tmp_path / "torch_ref" / os.path.basename(path)
    ref.parent.mkdir(exist_ok=True)
    torch.save(real, ref)
    with zipfile.ZipFile(path) as ours, zipfile.ZipFile(ref) as theirs:
        _compare_archives(ours, theirs)


def _compare_archives(ours, theirs):
    assert sorted(ours.namelist()) == sorted(theirs.namelist())
    name = [n for n in ours.namelist() if n.endswith("/data.pkl")][0]
    # our pickle is byte-identical to torch's (same storage keys, same opcodes)
    assert ours.read(name) == theirs.read(name)
    for rec in (".format_version", ".storage_alignment", "byteorder", "version"):
        n = name.replace("data.pkl", rec)
        assert ours.read(n) == theirs.read(n), rec
    sid = name.replace("data.pkl", ".data/serialization_id")
    assert len(ours.read(sid)) == len(theirs.read(sid)) == 40 and ours.read(sid).isdigit()


def assert_zip_structure(path):
    """zip64 everywhere, data descriptors, 64-byte aligned payloads, CRCs valid."""
    raw = Path(path).read_bytes()
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None
        infos = zf.infolist()
    for zi in infos:
        assert zi.compress_type == zipfile.ZIP_STORED
        assert zi.flag_bits & 0x08, zi.filename
        assert zi.extract_version == 45, zi.filename
        sig, _, flags = struct.unpack_from("<IHH", raw, zi.header_offset)
        assert sig == 0x04034B50 and flags & 0x08
        csize, usize, nlen, elen = struct.unpack_from("<IIHH", raw, zi.header_offset + 18)
        assert csize == usize == 0xFFFFFFFF  # sizes live in the zip64 fields
        assert struct.unpack_from("<HHQQ", raw, zi.header_offset + 30 + nlen) == (1, 16, 0, 0)
        data_at = zi.header_offset + 30 + nlen + elen
        assert data_at % 64 == 0, zi.filename
        dd = struct.unpack_from("<IIQQ", raw, data_at + zi.file_size)
        assert dd == (0x08074B50, zi.CRC, zi.file_size, zi.file_size), zi.filename
    # classic end record defers everything to the zip64 records
    assert raw[-22:-18] == b"PK\x05\x06"
    assert struct.unpack_from("<HHIIH", raw, len(raw) - 22 + 8) == (0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    assert raw[-42:-38] == b"PK\x06\x07"
    assert raw[-98:-94] == b"PK\x06\x06"


def main_object():
    g = torch.Generator().manual_seed(0)
    acts = torch.randn(N, T, H, generator=g).to(torch.bfloat16)
    real = {
        "layer": 3,
        "activations": acts,
        "token_ids": torch.randint(0, 50000, (N, T), generator=g, dtype=torch.int64),
        "mask": torch.randint(-128, 127, (N, T), generator=g, dtype=torch.int8),
        "norms": torch.randn(N, generator=g),
        "genders": ["f", "m", "x"],
        "meta": {"model": "tiny", 0: {"scale": 0.5, "ok": True, "none": None}, 7: [1, 2]},
        "flags": (True, False),
    }
    return real


def test_roundtrip_uneven_chunks_and_input_kinds(tmp_path):
    real = main_object()
    path = tmp_path / "acts.pt"
    w = PtFileWriter(path, slots_of(real), ["activations"])
    flat = real["activations"].reshape(-1)
    raw = byte_view(real["activations"])
    w.write(flat[:7])  # tensor of the slot's dtype
    w.write(flat[7:8].view(torch.uint8).numpy())  # numpy byte view
    w.write(raw[16:17])  # bytes, splitting an element
    w.write(memoryview(raw)[17:101])  # memoryview
    w.write(bytearray(raw[101:150]))
    w.write(b"")  # no-op
    w.write(np.frombuffer(raw[150:], dtype=np.uint8).reshape(-1, 2))  # 2-D numpy
    with pytest.raises(PtFileError, match="all streamed slots are full"):
        w.write(b"\0")
    res = w.finish({"token_ids": real["token_ids"], "mask": real["mask"], ("norms",): real["norms"]})
    assert res == {"bytes": os.path.getsize(path), "sha256": sha256_file(path)}
    assert res["bytes"] == w.expected_bytes
    assert not os.path.exists(str(path) + ".partial")
    assert_loads(path, real)
    assert_zip_structure(path)
    assert_names_match_torch_save(tmp_path, path, real)


def several_slots_object():
    g = torch.Generator().manual_seed(1)
    return {
        "activations": {
            0: torch.randn(2, 3, 4, generator=g).to(torch.bfloat16),
            3: torch.randn(5, 4, generator=g),
            5: torch.zeros(0, 4, dtype=torch.bfloat16),
        },
        "empty": torch.zeros(0, dtype=torch.float32),
        "counts": torch.arange(6, dtype=torch.int64),
        "small": torch.randint(-5, 5, (3,), generator=g, dtype=torch.int8),
        "f8": torch.randn(4, generator=g).to(torch.float8_e4m3fn),
        "u16": torch.tensor([1, 2, 60000], dtype=torch.uint16),
        "scalar": torch.tensor(2.5, dtype=torch.float64),
        "labels": ["a", "b"],
    }


SEVERAL_STREAMED = [("activations", 3), "empty", ("activations", 5), ("activations", 0), "counts", "f8"]


def several_stream_bytes(real) -> bytes:
    out = b""
    for p in SEVERAL_STREAMED:
        t = real
        for k in (p if isinstance(p, tuple) else (p,)):
            t = t[k]
        out += byte_view(t)
    return out


def test_several_streamed_slots_and_spanning_writes(tmp_path):
    real = several_slots_object()
    stream = several_stream_bytes(real)
    path = tmp_path / "multi.pt"
    w = PtFileWriter(path, slots_of(real), SEVERAL_STREAMED)
    assert w.state()["slot"] == SEVERAL_STREAMED.index(("activations", 3))
    # one write spanning three slots (incl. two zero-size ones), then uneven pieces
    first = 4 * 5 * 4 + 2 * 3 * 4 * 2 - 3
    w.write(stream[:first])
    assert w.state()["slot"] == SEVERAL_STREAMED.index(("activations", 0))
    for a, b in [(first, first + 1), (first + 1, first + 2), (first + 2, len(stream) - 5)]:
        w.write(stream[a:b])
    w.write(memoryview(stream)[len(stream) - 5:])
    res = w.finish({"small": real["small"], "u16": real["u16"], "scalar": real["scalar"]})
    assert res["sha256"] == sha256_file(path)
    assert_loads(path, real)
    assert_zip_structure(path)
    assert_names_match_torch_save(tmp_path, path, real)


def test_write_zeros_reuses_buffer_and_spans_slots(tmp_path, monkeypatch):
    monkeypatch.setattr(ptfile, "_ZERO_CHUNK", 100)  # force many reuses of one small buffer
    real = {"a": torch.zeros(50, dtype=torch.float32), "b": torch.zeros(7, 3, dtype=torch.bfloat16),
            "c": torch.arange(4, dtype=torch.int64)}
    real["c"][:] = torch.tensor([0, 0, 9, 10])
    path = tmp_path / "z.pt"
    w = PtFileWriter(path, slots_of(real), ["a", "b", "c"])
    w.write_zeros(0)
    w.write_zeros(150)
    w.write_zeros(200 + 42 - 150 + 16)  # rest of a, all of b, first two int64 of c
    w.write(real["c"][2:])
    w.finish()
    assert_loads(path, real)
    assert zip_call(path, lambda z: z.testzip()) is None


def test_no_streamed_slots_and_only_streamed(tmp_path):
    real = {"x": torch.arange(5, dtype=torch.int8), "n": None}
    w = PtFileWriter(tmp_path / "a.pt", slots_of(real))
    with pytest.raises(PtFileError, match="no streamed slots"):
        w.write(b"x")
    w.finish({"x": real["x"]})
    assert_loads(tmp_path / "a.pt", real)
    w = PtFileWriter(tmp_path / "b.pt", slots_of(real), ["x"])
    w.write(real["x"])
    w.finish()
    assert_loads(tmp_path / "b.pt", real)
    w = PtFileWriter(tmp_path / "c.pt", {"layer": 1})
    w.finish()
    assert torch.load(tmp_path / "c.pt", weights_only=True, mmap=True) == {"layer": 1}


def test_final_name_only_appears_at_finish(tmp_path):
    real = main_object()
    path = tmp_path / "out.pt"
    w = PtFileWriter(path, slots_of(real), ["activations"])
    assert not path.exists() and os.path.exists(w.partial_path)
    assert w.partial_path == str(path) + ".partial"
    w.write(real["activations"].reshape(-1)[:5])
    w.state()
    assert not path.exists()
    w.write(real["activations"].reshape(-1)[5:])
    assert not path.exists()
    w.finish({"token_ids": real["token_ids"], "mask": real["mask"], "norms": real["norms"]})
    assert path.exists() and not os.path.exists(w.partial_path)
    with pytest.raises(PtFileError, match="closed"):
        w.write(b"")


def test_abort_and_context_manager_remove_partial(tmp_path):
    obj = {"a": TensorSlot([4], torch.int64)}
    w = PtFileWriter(tmp_path / "a.pt", obj, ["a"], partial_path=tmp_path / "tmp.bin")
    assert (tmp_path / "tmp.bin").exists()
    w.write(torch.arange(2))
    w.abort()
    w.abort()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError, match="boom"):
        with PtFileWriter(tmp_path / "b.pt", obj, ["a"]) as w:
            w.write(torch.arange(2))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(PtFileError, match="without finish"):
        with PtFileWriter(tmp_path / "b.pt", obj, ["a"]) as w:
            w.write(torch.arange(4))
    assert list(tmp_path.iterdir()) == []
    with PtFileWriter(tmp_path / "c.pt", obj, ["a"]) as w:
        w.write(torch.arange(4))
        w.finish()
    assert torch.equal(torch.load(tmp_path / "c.pt", weights_only=True)["a"], torch.arange(4))


def test_too_many_and_too_few_bytes(tmp_path):
    obj = {"a": TensorSlot([3], torch.int64), "b": TensorSlot([2], torch.int8)}
    w = PtFileWriter(tmp_path / "x.pt", obj, ["a", "b"])
    w.write(torch.arange(2))
    with pytest.raises(PtFileError, match=r"overflows streamed slot 'a': it holds 24 bytes, 16 already written"
                                          r", only 10 bytes left in it and the following"):
        w.write(b"\0" * 11)
    with pytest.raises(PtFileError, match=r"finish\(\) before streamed slot 'a' is full: 16 of 24 bytes"):
        w.finish()
    w.write(torch.tensor([7]))
    w.write(b"\x01")
    with pytest.raises(PtFileError, match=r"overflows streamed slot 'b': it holds 2 bytes, 1 already written"):
        w.write_zeros(2)
    with pytest.raises(PtFileError, match=r"slot 'b' is full: 1 of 2 bytes written"):
        w.finish()
    w.write(b"\x02")
    with pytest.raises(PtFileError, match=r"all streamed slots are full \(last slot 'b' holds 2 bytes\)"):
        w.write(b"\0")
    w.finish()  # failed writes wrote nothing
    out = torch.load(tmp_path / "x.pt", weights_only=True)
    assert out["a"].tolist() == [0, 1, 7] and out["b"].tolist() == [1, 2]


def test_bad_write_inputs(tmp_path):
    obj = {"a": TensorSlot([4, 4], torch.float32), "b": TensorSlot([4], torch.int32)}
    w = PtFileWriter(tmp_path / "x.pt", obj, ["a", "b"])
    with pytest.raises(PtFileError, match="float64 tensor for streamed slot 'a' of dtype torch.float32"):
        w.write(torch.zeros(2, dtype=torch.float64))
    with pytest.raises(PtFileError, match="contiguous"):
        w.write(torch.zeros(4, 4).t()[:, :2])
    with pytest.raises(PtFileError, match="contiguous"):
        w.write(np.zeros((4, 4), dtype=np.float32)[:, :2])
    w.write(torch.zeros(15))
    with pytest.raises(PtFileError, match="float32 tensor for streamed slot 'b' of dtype torch.int32"):
        w.write(torch.zeros(2))  # would spill into b
    with pytest.raises(PtFileError, match="accepts tensors"):
        w.write(12)
    w.abort()


def test_finish_slot_mismatch(tmp_path):
    obj = {"a": TensorSlot([2], torch.int8), "b": TensorSlot([2, 3], torch.float32), "c": {1: TensorSlot([1], torch.int64)}}
    w = PtFileWriter(tmp_path / "x.pt", obj, ["a"])
    w.write(b"\x01\x02")
    good = {"b": torch.ones(2, 3), ("c", 1): torch.tensor([5])}
    with pytest.raises(PtFileError, match=r"slot 'b' expects shape \[2, 3\] torch.float32, got shape \[3, 2\]"):
        w.finish({**good, "b": torch.ones(3, 2)})
    with pytest.raises(PtFileError, match=r"slot \('c', 1\) expects shape \[1\] torch.int64, got shape \[1\] torch.int32"):
        w.finish({**good, ("c", 1): torch.tensor([5], dtype=torch.int32)})
    with pytest.raises(PtFileError, match=r"missing tensors for slots: \('c', 1\)"):
        w.finish({"b": torch.ones(2, 3)})
    with pytest.raises(PtFileError, match=r"unexpected paths: 'a' \(streamed slot\), 'zz' \(not a slot\)"):
        w.finish({**good, "a": torch.zeros(2, dtype=torch.int8), "zz": torch.zeros(1)})
    with pytest.raises(PtFileError, match="must be a torch.Tensor"):
        w.finish({**good, "b": [[1.0] * 3] * 2})
    assert not (tmp_path / "x.pt").exists()
    w.finish({"b": torch.ones(2, 3).t().contiguous().t(), ("c", 1): torch.tensor([5])})  # non-contiguous is fine here
    out = torch.load(tmp_path / "x.pt", weights_only=True, mmap=True)
    assert out["a"].tolist() == [1, 2] and torch.equal(out["b"], torch.ones(2, 3)) and out["c"][1].tolist() == [5]


def test_bad_layouts(tmp_path):
    s = TensorSlot([2], torch.int8)
    with pytest.raises(PtFileError, match="same TensorSlot object"):
        PtFileWriter(tmp_path / "x.pt", {"a": s, "b": s})
    with pytest.raises(PtFileError, match="real tensor"):
        PtFileWriter(tmp_path / "x.pt", {"a": torch.zeros(1)})
    with pytest.raises(PtFileError, match="dict keys must be str or int"):
        PtFileWriter(tmp_path / "x.pt", {(1, 2): 3})
    with pytest.raises(PtFileError, match="not a TensorSlot"):
        PtFileWriter(tmp_path / "x.pt", {"a": s}, ["b"])
    with pytest.raises(PtFileError, match="non-negative"):
        TensorSlot([-1], torch.int8)
    assert not list(tmp_path.iterdir())


# --- checkpoint / resume ------------------------------------------------------------

def resume_setup():
    real = several_slots_object()
    stream = several_stream_bytes(real)
    values = {"small": real["small"], "u16": real["u16"], "scalar": real["scalar"]}
    return real, stream, values


def reference_sha(tmp_path, name="ref.pt"):
    real, stream, values = resume_setup()
    (tmp_path / "ref").mkdir()
    w = PtFileWriter(tmp_path / "ref" / name, slots_of(real), SEVERAL_STREAMED)
    for i in range(0, len(stream), 37):
        w.write(stream[i:i + 37])
    return w.finish(values)


STREAM_LEN = len(several_stream_bytes(several_slots_object()))
SLOT_BOUNDARY = 5 * 4 * 4 + 2 * 3 * 4 * 2  # end of ("activations", 0)


@pytest.mark.parametrize("cut", [0, 1, 79, 80, SLOT_BOUNDARY, SLOT_BOUNDARY + 8, STREAM_LEN - 1, STREAM_LEN])
def test_kill_and_resume_is_byte_identical(tmp_path, cut):
    ref = reference_sha(tmp_path, "out.pt")
    real, stream, values = resume_setup()
    path = tmp_path / "out.pt"
    w = PtFileWriter(path, slots_of(real), SEVERAL_STREAMED)
    w.write(stream[:cut])
    state = json.loads(json.dumps(w.state()))
    assert state["bytes"] == os.path.getsize(w.partial_path)
    w.write(stream[cut:cut + 50])  # written after the state: must be discarded
    del w  # dropped without finish (the partial file stays)
    with open(str(path) + ".partial", "ab") as f:
        f.write(b"junk from a half-written later chunk")
    assert not path.exists()
    w = PtFileWriter.resume(path, slots_of(real), SEVERAL_STREAMED, state)
    assert w.bytes_written == state["bytes"]
    w.write(stream[cut:])
    res = w.finish(values)
    assert res["sha256"] == ref["sha256"] == sha256_file(path)
    assert res["bytes"] == ref["bytes"]
    assert Path(path).read_bytes() == Path(tmp_path / "ref" / "out.pt").read_bytes()
    assert_loads(path, real)


def test_resume_twice_and_from_older_state(tmp_path):
    ref = reference_sha(tmp_path, "out.pt")
    real, stream, values = resume_setup()
    path = tmp_path / "out.pt"
    w = PtFileWriter(path, slots_of(real), SEVERAL_STREAMED)
    w.write(stream[:30])
    s1 = w.state()
    w.write(stream[30:100])
    w.state()
    w.close()
    with pytest.raises(PtFileError, match="was closed"):
        w.write(b"x")
    assert os.path.exists(w.partial_path)
    w = PtFileWriter.resume(path, slots_of(real), SEVERAL_STREAMED, s1)  # older state: truncates more
    w.write(stream[30:120])
    s3 = w.state()
    w.write(stream[120:130])
    del w
    w = PtFileWriter.resume(path, slots_of(real), SEVERAL_STREAMED, s3)
    w.write(stream[120:])
    assert w.finish(values) == ref


def test_resume_errors(tmp_path):
    real, stream, values = resume_setup()
    path = tmp_path / "out.pt"
    w = PtFileWriter(path, slots_of(real), SEVERAL_STREAMED)
    w.write(stream[:100])
    state = w.state()
    w.close()
    partial = str(path) + ".partial"
    good = Path(partial).read_bytes()
    with pytest.raises(PtFileError, match="different layout"):
        PtFileWriter.resume(path, slots_of(real), SEVERAL_STREAMED[::-1], state)
    other = dict(slots_of(real), labels=["a", "c"])
    with pytest.raises(PtFileError, match="different layout"):
        PtFileWriter.resume(path, other, SEVERAL_STREAMED, state)
    with pytest.raises(PtFileError, match="inconsistent state"):
        PtFileWriter.resume(path, slots_of(real), SEVERAL_STREAMED, dict(state, bytes=state["bytes"] + 1))
    with open(partial, "r+b") as f:
        f.truncate(state["bytes"] - 1)
    with pytest.raises(PtFileError, match=rf"has {state['bytes'] - 1} bytes, shorter than the {state['bytes']} bytes"):
        PtFileWriter.resume(path, slots_of(real), SEVERAL_STREAMED, state)
    bad = bytearray(good)
    bad[state["bytes"] - 3] ^= 1
    Path(partial).write_bytes(bad)
    with pytest.raises(PtFileError, match="do not match the sha256"):
        PtFileWriter.resume(path, slots_of(real), SEVERAL_STREAMED, state)
    os.unlink(partial)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        PtFileWriter.resume(path, slots_of(real), SEVERAL_STREAMED, state)
    assert not path.exists()


def test_torch_load_does_not_check_crc(tmp_path):
    """Documents the claim in the module docstring: only zip tools check CRC-32."""
    real = {"a": torch.arange(10, dtype=torch.int64), "s": ["hello"]}
    path = tmp_path / "c.pt"
    w = PtFileWriter(path, slots_of(real), ["a"])
    w.write(real["a"])
    w.finish()
    raw = bytearray(Path(path).read_bytes())
    # 1) payload byte changed, CRC left alone
    zi = zip_call(path, lambda z: z.getinfo("c/data/0"))
    nlen, elen = struct.unpack_from("<HH", raw, zi.header_offset + 26)
    bad = bytearray(raw)
    bad[zi.header_offset + 30 + nlen + elen] ^= 0x01
    Path(tmp_path / "p.pt").write_bytes(bad)
    assert zip_call(tmp_path / "p.pt", lambda z: z.testzip()) == "c/data/0"
    for mmap in (False, True):
        assert torch.load(tmp_path / "p.pt", weights_only=True, mmap=mmap)["a"][0].item() == 1
    # 2) a pickled string changed, CRC left alone
    bad = bytearray(raw)
    i = bad.find(b"hello")
    bad[i] = ord("j")
    Path(tmp_path / "s.pt").write_bytes(bad)
    assert zip_call(tmp_path / "s.pt", lambda z: z.testzip()) == "c/data.pkl"
    for mmap in (False, True):
        assert torch.load(tmp_path / "s.pt", weights_only=True, mmap=mmap)["s"] == ["jello"]
    # 3) all recorded CRCs wrong, content intact
    bad = bytearray(raw)
    for sig, at in ((b"PK\x01\x02", 16), (b"PK\x07\x08", 4)):
        i = bad.find(sig)
        while i >= 0:
            bad[i + at:i + at + 4] = b"\xde\xad\xbe\xef"
            i = bad.find(sig, i + 1)
    Path(tmp_path / "q.pt").write_bytes(bad)
    assert zip_call(tmp_path / "q.pt", lambda z: z.testzip()) is not None
    for mmap in (False, True):
        assert_same(torch.load(tmp_path / "q.pt", weights_only=True, mmap=mmap), real)
