"""merge_shards / combine_layers and their command-line scripts."""
from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import layer_file_factory as F  # noqa: E402

from layerwise import schema  # noqa: E402
from layerwise.errors import LayerwiseError  # noqa: E402
from layerwise.merge import combine_layers, merge_shards  # noqa: E402
from layerwise.store import sample_rows  # noqa: E402

REPO = F.REPO
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


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


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
    assert data["lengths"].tolist() == [s.rows.shape[0] for s in expected]
    assert data["nan_counts"].tolist() == [s.nan_count for s in expected]
    assert sum(data["nan_counts"].tolist()) == 7
    assert data["model_id"] == F.MODEL_ID and data["model_revision"] == F.MODEL_REVISION
    assert data["num_layers"] == F.NUM_LAYERS and data["hidden_size"] == F.HIDDEN_SIZE
    lengths = [s.rows.shape[0] for s in expected]
    if layout == "padded":
        assert tuple(data["activations"].shape) == (len(expected), max(lengths), F.HIDDEN_SIZE)
    else:
        assert tuple(data["activations"].shape) == (sum(lengths), F.HIDDEN_SIZE)
    for i, s in enumerate(expected):
        rows, token_ids = sample_rows(data, i)
        assert torch.equal(rows, s.stored(dtype)), s.sample_id
        assert torch.equal(token_ids, s.token_ids), s.sample_id
    assert summary["samples"] == len(expected) == sum(SHARD_SIZES)
    assert summary["bytes"] == out.stat().st_size
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no scratch, no .tmp left


@pytest.mark.parametrize("layout,dtype", FORMATS[:2], ids=FORMAT_IDS[:2])
def test_single_input_is_rewritten_unchanged(tmp_path, layout, dtype):
    paths, _ = write_shards(tmp_path, 0, "arabic", layout, dtype, sizes=(6,))
    out = tmp_path / "layer_0_arabic.pt"
    merge_shards(paths, out, 0, "arabic")
    a, b = load(paths[0]), load(out)
    assert set(a) == set(b)
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


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
])
def test_mismatched_settings_name_the_file(tmp_path, key, value):
    paths, _ = write_shards(tmp_path, 1, "english", "padded", torch.float32, sizes=(2,))
    odd = tmp_path / "odd" / "layer_1_english.pt"
    F.write_layer_file(odd, 1, "english", F.make_samples(1, "english", F.sample_ids(2, 10)),
                       meta_overrides={key: value})
    with pytest.raises(LayerwiseError, match=key) as err:
        merge_shards(paths + [odd], tmp_path / "out.pt", 1, "english")
    assert str(odd) in str(err.value)


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


def test_failure_while_saving_leaves_no_final_file(tmp_path, monkeypatch):
    paths, _ = write_shards(tmp_path, 1, "english", "padded", torch.float32)
    out = tmp_path / "merged" / "layer_1_english.pt"
    out.parent.mkdir()

    def broken_save(obj, fh, *args, **kwargs):
        fh.write(b"PK\x03\x04 partial bytes")  # a torn write, then the failure
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        merge_shards(paths, out, 1, "english")
    assert not out.exists()
    assert list(out.parent.iterdir()) == []  # no .tmp, no scratch


def test_failure_midway_through_samples_leaves_no_final_file(tmp_path, monkeypatch):
    import layerwise.merge as merge_mod

    paths, _ = write_shards(tmp_path, 1, "english", "ragged", torch.float32)
    out = tmp_path / "merged" / "layer_1_english.pt"
    calls = {"n": 0}
    real = merge_mod.sample_rows

    def flaky(data, i):
        calls["n"] += 1
        if calls["n"] == 6:
            raise RuntimeError("I/O error reading shard")
        return real(data, i)

    monkeypatch.setattr(merge_mod, "sample_rows", flaky)
    with pytest.raises(RuntimeError):
        merge_shards(paths, out, 1, "english")
    assert not out.exists()
    assert list(out.parent.iterdir()) == []


# -- combine --------------------------------------------------------------------------------
@pytest.mark.parametrize("layout,dtype", FORMATS[:2], ids=FORMAT_IDS[:2])
def test_combined_file_holds_every_layer(tmp_path, layout, dtype):
    ids = F.sample_ids(7)
    written = F.write_layer_set(tmp_path / "layers", [5, 0, 3], ["english"], ids, layout=layout, dtype=dtype)
    inputs = [written[(layer, "english")][0] for layer in (3, 5, 0)]  # any order
    out = tmp_path / schema.combined_filename("english")
    summary = combine_layers(inputs, out, "english")

    data = torch.load(out, map_location="cpu", weights_only=True)
    assert set(data) == {
        "language", "layers", "activations", "hidden_size", "genders", "sample_ids", "lengths", "offsets",
        "token_ids", "token_selection", "layout", "dtype", "model_id", "model_revision", "num_layers", "nan_counts",
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
        assert torch.equal(data["activations"][layer], per_layer["activations"])
        assert torch.equal(data["nan_counts"][layer], per_layer["nan_counts"])
        view = dict(data, activations=data["activations"][layer])
        for i, s in enumerate(samples):
            rows, tok = sample_rows(view, i)
            assert torch.equal(rows, s.stored(dtype)) and torch.equal(tok, s.token_ids)
    for key in ("lengths", "offsets", "token_ids"):
        assert torch.equal(data[key], load(inputs[0])[key])
    assert summary["layers"] == [0, 3, 5] and summary["bytes"] == out.stat().st_size
    assert not out.with_name(out.name + ".tmp").exists()


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


def test_combine_rejects_other_language_and_duplicate_layer(tmp_path):
    ids = F.sample_ids(3)
    en = F.write_layer_set(tmp_path / "en", [0], ["english"], ids)[(0, "english")][0]
    ar = F.write_layer_set(tmp_path / "ar", [1], ["arabic"], ids)[(1, "arabic")][0]
    with pytest.raises(LayerwiseError, match="language") as err:
        combine_layers([en, ar], tmp_path / "c.pt", "english")
    assert str(ar) in str(err.value)
    with pytest.raises(LayerwiseError, match="twice"):
        combine_layers([en, en], tmp_path / "c.pt", "english")


# -- command-line scripts -------------------------------------------------------------------
def run_cli(name: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "bin" / name), *map(str, args)],
                          capture_output=True, text=True, cwd="/", timeout=120)


def test_merge_and_combine_cli(tmp_path):
    for name in ("layerwise-merge", "layerwise-combine"):
        assert (REPO / "bin" / name).stat().st_mode & 0o111, f"{name} is not executable"
    merged = []
    for layer in (0, 1):
        paths, _ = write_shards(tmp_path / f"L{layer}", layer, "english", "ragged", torch.float32, sizes=(2, 3))
        out = tmp_path / "merged" / schema.layer_filename(layer, "english")
        res = run_cli("layerwise-merge", "--layer", layer, "--language", "english", "--out", out, *paths)
        assert res.returncode == 0, res.stderr
        assert load(out)["sample_ids"] == F.sample_ids(5)
        merged.append(out)
    out = tmp_path / schema.combined_filename("english")
    res = run_cli("layerwise-combine", "--language", "english", "--out", out, *merged)
    assert res.returncode == 0, res.stderr
    assert load(out)["layers"] == [0, 1]


def test_cli_user_errors_exit_2_without_traceback(tmp_path):
    paths, _ = write_shards(tmp_path, 0, "english", "padded", torch.float32, sizes=(2,))
    res = run_cli("layerwise-merge", "--layer", 0, "--language", "arabic", "--out", tmp_path / "o.pt", *paths)
    assert res.returncode == 2
    assert res.stderr.startswith("ERROR: ") and str(paths[0]) in res.stderr
    assert "Traceback" not in res.stderr
    res = run_cli("layerwise-combine", "--language", "arabic", "--out", tmp_path / "c.pt", *paths)
    assert res.returncode == 2 and res.stderr.startswith("ERROR: ") and str(paths[0]) in res.stderr
    assert not (tmp_path / "o.pt").exists() and not (tmp_path / "c.pt").exists()
