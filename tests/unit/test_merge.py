"""merge_shards / combine_layers (PUBLISH_RESULTS calls them; their CLIs are gone: see test_publish.py).

Inputs are written by the test factory through LayerFileStream, as extraction writes them; every
expectation comes from the FakeSamples the inputs were written from.
"""
from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest
import torch

from layerwise.core import schema  # noqa: E402
from layerwise.core.errors import LayerwiseError  # noqa: E402
from layerwise.layerfile import ptfile  # noqa: E402
from layerwise.layerfile.store import sample_rows  # noqa: E402
from layerwise.layerfile.stream import LayerFileStream  # noqa: E402
from layerwise.publish.merge import COMBINED_KEYS, combine_layers, merge_shards  # noqa: E402
from tests.support import layer_file_factory as F  # noqa: E402

FORMATS = [("padded", torch.float32), ("ragged", torch.bfloat16), ("padded", torch.bfloat16), ("ragged", torch.float32)]
FORMAT_IDS = [f"{lay}-{schema.dtype_name(dt)}" for lay, dt in FORMATS]
SHARD_SIZES = (4, 3, 5)


def write_shards(tmp_path: Path, layer: int, language: str, layout: str, dtype: torch.dtype,
                 sizes=SHARD_SIZES, **kwargs):
    """Shard files in separate directories (as EXTRACT work dirs are); returns (paths, samples per shard)."""
    paths, shards, start = [], [], 0
    for k, n in enumerate(sizes):
        samples = F.make_samples(layer, language, F.sample_ids(n, start))
        start += n
        if k == 1 and samples:
            samples[0].nan_count = 7  # seen-before-policy count must travel with its sample
        path = tmp_path / f"unit{k}" / schema.layer_filename(layer, language)
        F.write_layer_file(path, layer, language, samples, layout=layout, dtype=dtype, **kwargs)
        paths.append(path)
        shards.append(samples)
    return paths, shards


def load(path: Path, mmap: bool = False) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def kinds_of(data: dict, i: int) -> torch.Tensor:
    """token_kinds of sample i, whatever the layout (same shape as token_ids)."""
    return sample_rows({**data, "activations": data["token_kinds"]}, i)[0]


def assert_holds(data: dict, expected: list, dtype: torch.dtype) -> None:
    """Every sample's rows, token ids and kinds, and the padding, as the FakeSamples say."""
    lengths = [s.length for s in expected]
    assert data["lengths"].tolist() == lengths
    assert data["offsets"].tolist() == [0] + torch.cumsum(torch.tensor(lengths), 0).tolist()
    assert data["token_kinds"].dtype == torch.int8 and data["token_kinds"].shape == data["token_ids"].shape
    for i, s in enumerate(expected):
        rows, token_ids = sample_rows(data, i)
        assert torch.equal(rows, s.stored(dtype)), s.sample_id
        assert torch.equal(token_ids, s.token_ids), s.sample_id
        assert torch.equal(kinds_of(data, i), s.token_kinds), s.sample_id
    if data["layout"] == "padded":
        for i, n in enumerate(lengths):
            assert torch.count_nonzero(data["activations"][i, n:]) == 0
            assert bool((data["token_ids"][i, n:] == schema.PAD_TOKEN_ID).all())
            assert bool((data["token_kinds"][i, n:] == schema.TOKEN_KINDS["pad"]).all())


# -- merge ----------------------------------------------------------------------------------
@pytest.mark.parametrize("layout,dtype", FORMATS, ids=FORMAT_IDS)
def test_merge_of_three_shards_is_their_concatenation(tmp_path, layout, dtype):
    paths, shards = write_shards(tmp_path, 3, "english", layout, dtype)
    out = tmp_path / "merged" / "layer_3_english.pt"
    summary = merge_shards(paths, out, 3, "english")

    expected = [s for shard in shards for s in shard]
    data = load(out)
    assert set(schema.LAYER_FILE_KEYS) <= set(data)
    assert data["layer"] == 3 and data["language"] == "english"
    assert data["layout"] == layout and data["dtype"] == schema.dtype_name(dtype)
    assert data["activations"].dtype == dtype
    assert data["sample_ids"] == [s.sample_id for s in expected]
    assert data["genders"] == [s.gender for s in expected]
    assert data["nan_counts"].tolist() == [s.nan_count for s in expected]
    assert sum(data["nan_counts"].tolist()) == 7
    assert data["model_id"] == F.MODEL_ID and data["model_revision"] == F.MODEL_REVISION
    assert data["num_layers"] == F.NUM_LAYERS and data["hidden_size"] == F.HIDDEN_SIZE
    assert data["token_selection"] == "all" and data["nan_policy"] == "zero"
    lengths = [s.length for s in expected]
    if layout == "padded":
        assert tuple(data["activations"].shape) == (len(expected), max(lengths), F.HIDDEN_SIZE)
        assert tuple(data["token_kinds"].shape) == (len(expected), max(lengths))
    else:
        assert tuple(data["activations"].shape) == (sum(lengths), F.HIDDEN_SIZE)
        assert tuple(data["token_kinds"].shape) == (sum(lengths),)
    assert_holds(data, expected, dtype)
    # every kind of position the factory writes made it through
    assert {int(k) for k in torch.cat([s.token_kinds for s in expected]).unique()} <= set(
        int(k) for k in data["token_kinds"].unique())
    assert summary["samples"] == len(expected) == sum(SHARD_SIZES)
    assert summary["positions"] == sum(lengths) and summary["inputs"] == 3
    assert summary["bytes"] == out.stat().st_size
    assert summary["sha256"] == sha256(out)
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no .partial left
    # the merged file is a valid zip (the writer's CRCs are right) and memory-maps
    import zipfile
    assert zipfile.ZipFile(out).testzip() is None
    assert torch.equal(load(out, mmap=True)["activations"], data["activations"])


@pytest.mark.parametrize("layout,dtype", FORMATS[:2], ids=FORMAT_IDS[:2])
def test_single_input_is_rewritten_unchanged(tmp_path, layout, dtype):
    paths, _ = write_shards(tmp_path, 0, "arabic", layout, dtype, sizes=(6,))
    out = tmp_path / "layer_0_arabic.pt"
    info = merge_shards(paths, out, 0, "arabic")
    a, b = load(paths[0]), load(out)
    assert set(a) == set(b)
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key
    # same layout, same bytes: the write-once format is reproducible, so this is the input file itself
    assert info["sha256"] == sha256(out) == sha256(paths[0])


def test_merge_is_deterministic(tmp_path):
    paths, _ = write_shards(tmp_path, 1, "english", "ragged", torch.bfloat16)
    a = merge_shards(paths, tmp_path / "a" / "layer_1_english.pt", 1, "english")
    b = merge_shards(paths, tmp_path / "b" / "layer_1_english.pt", 1, "english")
    assert a["sha256"] == b["sha256"] == sha256(tmp_path / "a" / "layer_1_english.pt")


def test_shard_order_is_the_order_given(tmp_path):
    paths, shards = write_shards(tmp_path, 2, "english", "padded", torch.float32)
    out = tmp_path / "layer_2_english.pt"
    merge_shards([paths[2], paths[0], paths[1]], out, 2, "english")
    expected = shards[2] + shards[0] + shards[1]
    data = load(out)
    assert data["sample_ids"] == [s.sample_id for s in expected]
    assert_holds(data, expected, torch.float32)


def test_mismatched_hidden_size_names_the_file(tmp_path):
    paths, _ = write_shards(tmp_path, 1, "english", "padded", torch.float32, sizes=(3, 3))
    odd = tmp_path / "odd" / "layer_1_english.pt"
    F.write_layer_file(odd, 1, "english", F.make_samples(1, "english", F.sample_ids(2, 10), hidden_size=8))
    with pytest.raises(LayerwiseError, match="hidden_size") as err:
        merge_shards([paths[0], odd, paths[1]], tmp_path / "out.pt", 1, "english")
    assert str(odd) in str(err.value)
    assert not (tmp_path / "out.pt").exists()


def test_duplicate_sample_id_across_shards_names_file_and_id(tmp_path):
    paths, shards = write_shards(tmp_path, 1, "english", "ragged", torch.float32, sizes=(3, 3))
    dup = tmp_path / "dup" / "layer_1_english.pt"
    again = F.make_samples(1, "english", [shards[0][1].sample_id, "img0900"])
    F.write_layer_file(dup, 1, "english", again, layout="ragged")
    with pytest.raises(LayerwiseError, match="duplicate sample_id") as err:
        merge_shards(paths + [dup], tmp_path / "out.pt", 1, "english")
    assert str(dup) in str(err.value) and shards[0][1].sample_id in str(err.value)
    assert str(paths[0]) in str(err.value)  # where the id was seen first


def test_wrong_language_names_the_file(tmp_path):
    paths, _ = write_shards(tmp_path, 2, "english", "padded", torch.float32, sizes=(2,))
    other = tmp_path / "x" / "layer_2_arabic.pt"
    F.write_layer_file(other, 2, "arabic", F.make_samples(2, "arabic", F.sample_ids(2, 5)))
    with pytest.raises(LayerwiseError, match="language") as err:
        merge_shards(paths + [other], tmp_path / "out.pt", 2, "english")
    assert str(other) in str(err.value)


def test_wrong_layer_names_the_file(tmp_path):
    paths, _ = write_shards(tmp_path, 2, "english", "padded", torch.float32, sizes=(2,))
    with pytest.raises(LayerwiseError, match="layer 2, expected layer 4") as err:
        merge_shards(paths, tmp_path / "out.pt", 4, "english")
    assert str(paths[0]) in str(err.value)


@pytest.mark.parametrize("key,value", [
    ("nan_policy", "keep"), ("token_selection", "text"), ("model_revision", "other"), ("model_id", "x/y"),
    ("num_layers", 99),
])
def test_mismatched_settings_name_the_file(tmp_path, key, value):
    paths, _ = write_shards(tmp_path, 1, "english", "padded", torch.float32, sizes=(2,))
    odd = tmp_path / "odd" / "layer_1_english.pt"
    F.write_layer_file(odd, 1, "english", F.make_samples(1, "english", F.sample_ids(2, 10)),
                       meta_overrides={key: value})
    with pytest.raises(LayerwiseError, match=key) as err:
        merge_shards(paths + [odd], tmp_path / "out.pt", 1, "english")
    assert str(odd) in str(err.value)
    assert not (tmp_path / "out.pt").exists()


@pytest.mark.parametrize("layout,dtype", [("ragged", torch.float32), ("padded", torch.bfloat16)])
def test_mismatched_layout_or_dtype_names_the_file(tmp_path, layout, dtype):
    paths, _ = write_shards(tmp_path, 1, "english", "padded", torch.float32, sizes=(2,))
    odd = tmp_path / "odd" / "layer_1_english.pt"
    F.write_layer_file(odd, 1, "english", F.make_samples(1, "english", F.sample_ids(2, 10)),
                       layout=layout, dtype=dtype)
    with pytest.raises(LayerwiseError) as err:
        merge_shards(paths + [odd], tmp_path / "out.pt", 1, "english")
    assert str(odd) in str(err.value)


def test_corrupt_input_is_a_user_error(tmp_path):
    paths, _ = write_shards(tmp_path, 1, "english", "padded", torch.float32, sizes=(2, 2))
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[: len(data) // 2])
    with pytest.raises(LayerwiseError, match="truncated or corrupt") as err:
        merge_shards(paths, tmp_path / "out.pt", 1, "english")
    assert str(paths[1]) in str(err.value)


def test_missing_input_and_no_inputs_are_user_errors(tmp_path):
    with pytest.raises(LayerwiseError, match="not found") as err:
        merge_shards([tmp_path / "nope" / "layer_0_english.pt"], tmp_path / "out.pt", 0, "english")
    assert str(tmp_path / "nope") in str(err.value)
    with pytest.raises(LayerwiseError, match="no input files"):
        merge_shards([], tmp_path / "out.pt", 0, "english")


def test_input_missing_token_kinds_names_file_and_key(tmp_path):
    paths, _ = write_shards(tmp_path, 1, "english", "padded", torch.float32, sizes=(2, 2))
    old = load(paths[1])
    del old["token_kinds"]
    torch.save(old, paths[1])  # a layer file of the seed's era
    with pytest.raises(LayerwiseError, match="token_kinds") as err:
        merge_shards(paths, tmp_path / "out.pt", 1, "english")
    assert str(paths[1]) in str(err.value)


def test_failure_while_finishing_leaves_no_final_file(tmp_path, monkeypatch):
    paths, _ = write_shards(tmp_path, 1, "english", "padded", torch.float32)
    out = tmp_path / "merged" / "layer_1_english.pt"
    out.parent.mkdir()

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    # every byte is written, then the final fsync fails (before the rename to the final name)
    monkeypatch.setattr(ptfile.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        merge_shards(paths, out, 1, "english")
    monkeypatch.undo()
    assert not out.exists()
    assert list(out.parent.iterdir()) == []  # no .partial either


@pytest.mark.parametrize("layout", ["padded", "ragged"])
def test_failure_midway_through_samples_leaves_no_final_file(tmp_path, monkeypatch, layout):
    paths, _ = write_shards(tmp_path, 1, "english", layout, torch.float32)
    out = tmp_path / "merged" / "layer_1_english.pt"
    calls = {"n": 0}
    real = LayerFileStream.append

    def flaky(self, rows, nan_count=0):
        calls["n"] += 1
        if calls["n"] == 6:  # in the second shard
            raise RuntimeError("I/O error reading shard")
        return real(self, rows, nan_count)

    monkeypatch.setattr(LayerFileStream, "append", flaky)
    with pytest.raises(RuntimeError, match="I/O error"):
        merge_shards(paths, out, 1, "english")
    assert calls["n"] == 6
    assert not out.exists()
    assert list(out.parent.iterdir()) == []  # the partial file was removed
    monkeypatch.undo()
    # the inputs are untouched: a second attempt succeeds
    merge_shards(paths, out, 1, "english")
    assert load(out)["sample_ids"] == F.sample_ids(sum(SHARD_SIZES))


def test_an_existing_output_is_replaced_only_when_complete(tmp_path, monkeypatch):
    paths, _ = write_shards(tmp_path, 1, "english", "ragged", torch.float32)
    out = tmp_path / "merged" / "layer_1_english.pt"
    merge_shards(paths[:1], out, 1, "english")
    before = sha256(out)
    real = LayerFileStream.append
    monkeypatch.setattr(LayerFileStream, "append",
                        lambda self, rows, n=0: (_ for _ in ()).throw(RuntimeError("boom")) if self.num_samples == 5
                        else real(self, rows, n))
    with pytest.raises(RuntimeError, match="boom"):
        merge_shards(paths, out, 1, "english")
    assert sha256(out) == before  # the earlier complete file is still there, unchanged


# -- combine --------------------------------------------------------------------------------
@pytest.mark.parametrize("layout,dtype", FORMATS[:2], ids=FORMAT_IDS[:2])
def test_combined_file_holds_every_layer(tmp_path, layout, dtype):
    ids = F.sample_ids(7)
    written = F.write_layer_set(tmp_path / "layers", [5, 0, 3], ["english"], ids, layout=layout, dtype=dtype)
    inputs = [written[(layer, "english")][0] for layer in (3, 5, 0)]  # any order
    out = tmp_path / schema.combined_filename("english")
    summary = combine_layers(inputs, out, "english")

    data = torch.load(out, map_location="cpu", weights_only=True, mmap=True)
    assert set(data) == set(COMBINED_KEYS) == {
        "language", "layers", "activations", "hidden_size", "genders", "sample_ids", "lengths", "offsets",
        "token_ids", "token_kinds", "token_selection", "layout", "dtype", "model_id", "model_revision", "num_layers",
        "nan_counts",
    }
    assert data["language"] == "english" and data["layers"] == [0, 3, 5]
    assert sorted(data["activations"]) == [0, 3, 5] and sorted(data["nan_counts"]) == [0, 3, 5]
    assert data["sample_ids"] == ids and data["genders"] == F.genders_for(ids)
    assert data["layout"] == layout and data["dtype"] == schema.dtype_name(dtype)
    assert data["hidden_size"] == F.HIDDEN_SIZE and data["num_layers"] == F.NUM_LAYERS
    assert data["model_id"] == F.MODEL_ID and data["model_revision"] == F.MODEL_REVISION
    for layer in (0, 3, 5):
        path, samples = written[(layer, "english")]
        per_layer = load(path)
        assert data["activations"][layer].dtype == dtype
        assert torch.equal(data["activations"][layer], per_layer["activations"])
        assert torch.equal(data["nan_counts"][layer], per_layer["nan_counts"])
        assert_holds(dict(data, activations=data["activations"][layer]), samples, dtype)
    for key in ("lengths", "offsets", "token_ids", "token_kinds"):
        assert torch.equal(data[key], load(inputs[0])[key]), key
    assert summary["layers"] == [0, 3, 5] and summary["samples"] == 7
    assert summary["bytes"] == out.stat().st_size and summary["sha256"] == sha256(out)
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(["layers", out.name])  # no .partial left


def test_combine_names_the_file_that_disagrees(tmp_path):
    ids = F.sample_ids(5)
    written = F.write_layer_set(tmp_path / "a", [0, 1], ["english"], ids)
    shuffled = ids[:]
    random.Random(0).shuffle(shuffled)
    assert shuffled != ids
    odd = F.write_layer_file(tmp_path / "b" / "layer_2_english.pt", 2, "english",
                             F.make_samples(2, "english", shuffled))
    inputs = [written[(0, "english")][0], written[(1, "english")][0], odd]
    with pytest.raises(LayerwiseError, match="sample_ids") as err:
        combine_layers(inputs, tmp_path / "c.pt", "english")
    assert str(odd) in str(err.value)
    assert not (tmp_path / "c.pt").exists()


def test_combine_names_a_file_whose_token_kinds_differ(tmp_path):
    ids = F.sample_ids(4)
    written = F.write_layer_set(tmp_path / "a", [0], ["english"], ids)
    samples = F.make_samples(1, "english", ids)
    samples[2].token_kinds = torch.full_like(samples[2].token_kinds, schema.TOKEN_KINDS["template"])
    odd = F.write_layer_file(tmp_path / "b" / "layer_1_english.pt", 1, "english", samples)
    with pytest.raises(LayerwiseError, match="token_kinds") as err:
        combine_layers([written[(0, "english")][0], odd], tmp_path / "c.pt", "english")
    assert str(odd) in str(err.value)


def test_combine_rejects_other_language_and_duplicate_layer(tmp_path):
    ids = F.sample_ids(3)
    en = F.write_layer_set(tmp_path / "en", [0], ["english"], ids)[(0, "english")][0]
    ar = F.write_layer_set(tmp_path / "ar", [1], ["arabic"], ids)[(1, "arabic")][0]
    with pytest.raises(LayerwiseError, match="language") as err:
        combine_layers([en, ar], tmp_path / "c.pt", "english")
    assert str(ar) in str(err.value)
    with pytest.raises(LayerwiseError, match="twice"):
        combine_layers([en, en], tmp_path / "c.pt", "english")


def test_combine_failure_midway_leaves_no_final_file(tmp_path, monkeypatch):
    ids = F.sample_ids(6)
    written = F.write_layer_set(tmp_path / "l", [0, 1, 2], ["english"], ids)
    out = tmp_path / "o" / schema.combined_filename("english")
    calls = {"n": 0}
    real = ptfile.PtFileWriter.write

    def flaky(self, data):
        calls["n"] += 1
        if calls["n"] == 2:  # after the first layer's activations
            raise OSError("I/O error")
        return real(self, data)

    monkeypatch.setattr(ptfile.PtFileWriter, "write", flaky)
    with pytest.raises(OSError, match="I/O error"):
        combine_layers([p for p, _ in written.values()], out, "english")
    assert calls["n"] == 2
    assert list(out.parent.iterdir()) == []
