"""PUBLISH_SAE's placement (layerwise.publish.sae), on small fake SAE folders: whole folders, stale ones
moved aside, metrics.parquet listing exactly the published SAEs, and the record sae/inputs.json of the layer
files they were trained on (checked against the outdir's published files)."""
from __future__ import annotations

import json
import os

import pandas as pd
import pytest

from layerwise.core.errors import LayerwiseError
from layerwise.core.provenance import read_record, sha256_file
from layerwise.publish.sae import TRAINED_ON, publish_saes
from layerwise.sae.metrics import METRIC_COLUMNS

LAYERS = (0, 1, 2)


def layer_sha(layer, language, version="a"):
    return f"{version}{layer}{language}".ljust(64, "0")


def published_outdir(out, version="a"):
    """An outdir whose extraction_metadata.json lists layer files 0-2 x english/arabic."""
    out.mkdir(parents=True, exist_ok=True)
    recs = [{"path": f"layer_checkpoints/layer_{i}_{lang}.pt", "layer": i, "language": lang,
             "sha256": layer_sha(i, lang, version)} for i in LAYERS for lang in ("arabic", "english")]
    (out / "extraction_metadata.json").write_text(json.dumps({"status": "passed", "published": recs}))
    return out


def fake_sae(root, name, layer, ev, version="a"):
    d = root / name
    d.mkdir(parents=True)
    (d / "cfg.json").write_text(json.dumps({"layer": layer}))
    (d / TRAINED_ON).write_text(json.dumps({f"layer_{layer}_{lang}.pt": layer_sha(layer, lang, version)
                                            for lang in ("arabic", "english")}))
    (d / "sae_weights.safetensors").write_bytes(os.urandom(64))
    rec = {c: 0 for c in METRIC_COLUMNS}
    rec.update(layer=layer, language="pooled", languages="arabic,english", architecture="topk", split="validation",
               explained_variance=ev, fvu=1 - ev, mse=0.1, mean_l0=8.0, dead_fraction=0.0, sae_dir=name)
    (d / "metrics.json").write_text(json.dumps([rec]))
    return d


def test_publish_links_whole_folders_supersedes_stale_ones_and_lists_this_run(tmp_path):
    out = published_outdir(tmp_path / "results")
    first = [fake_sae(tmp_path / "w1", f"layer_{i}", i, 0.5) for i in (0, 1, 2)]
    publish_saes(first, out, "link", report=False)
    assert sorted(pd.read_parquet(out / "sae" / "metrics.parquet").layer) == [0, 1, 2]
    w = out / "sae" / "layer_1" / "sae_weights.safetensors"
    assert os.path.samefile(w, first[1] / "sae_weights.safetensors")       # a hard link, no copy

    second = [fake_sae(tmp_path / "w2", f"layer_{i}", i, 0.9) for i in (0, 1)]
    res = publish_saes(second, out, "copy", report=True)
    assert res["superseded"] == ["sae/layer_2"]
    assert sorted(p.name for p in (out / "sae").iterdir()) == ["figures", "inputs.json", "layer_0", "layer_1",
                                                                "metrics.parquet", "report.html"]
    assert sorted(p.name for p in (out / "sae" / "figures").iterdir()) == ["metrics.csv", "metrics.pdf", "metrics.svg"]
    assert list((out / "superseded").glob("*/sae/layer_2/cfg.json"))          # moved, not lost
    m = pd.read_parquet(out / "sae" / "metrics.parquet")
    assert sorted(m.layer) == [0, 1] and set(m.explained_variance) == {0.9}
    w = out / "sae" / "layer_1" / "sae_weights.safetensors"
    assert w.read_bytes() == (second[1] / "sae_weights.safetensors").read_bytes()
    assert not os.path.samefile(w, second[1] / "sae_weights.safetensors")   # mode copy
    assert not [p for p in (out / "sae").iterdir() if p.name.startswith(".")]   # no partial or old folders left


def test_publish_refuses_two_folders_of_one_name_and_non_sae_folders(tmp_path):
    a = fake_sae(tmp_path / "a", "layer_0", 0, 0.5)
    b = fake_sae(tmp_path / "b", "layer_0", 0, 0.5)
    with pytest.raises(LayerwiseError, match="two SAE folders named layer_0"):
        publish_saes([a, b], published_outdir(tmp_path / "out"))
    (tmp_path / "c" / "layer_3").mkdir(parents=True)
    with pytest.raises(LayerwiseError, match="not an SAE folder"):
        publish_saes([tmp_path / "c" / "layer_3"], tmp_path / "out")


def test_the_record_names_the_layer_files_and_every_sae_file(tmp_path):
    out = published_outdir(tmp_path / "results")
    saes = [fake_sae(tmp_path / "w", f"layer_{i}", i, 0.5) for i in LAYERS]
    publish_saes(saes, out, "copy", report=False)
    record = read_record(out / "sae")
    assert record["stage"] == "sae"
    # independent: the metadata the outdir was given
    meta = json.loads((out / "extraction_metadata.json").read_text())
    assert record["inputs"] == {r["path"]: r["sha256"] for r in meta["published"]}
    files = sorted(p for p in (out / "sae").rglob("*") if p.is_file() and p.parent != out / "sae")
    assert record["outputs"] == {p.relative_to(out).as_posix(): sha256_file(p) for p in files}
    first = (out / "sae" / "inputs.json").read_bytes()
    publish_saes(saes, out, "copy", report=False)        # the same SAEs again: the same bytes (no time, no run)
    assert (out / "sae" / "inputs.json").read_bytes() == first


def test_an_sae_trained_on_other_layer_files_is_refused(tmp_path):
    out = published_outdir(tmp_path / "results", version="b")     # the outdir now holds other data
    stale = fake_sae(tmp_path / "w", "layer_1", 1, 0.5, version="a")
    with pytest.raises(LayerwiseError, match="SAE layer_1 was trained on layer_1_arabic.pt a1arabic"):
        publish_saes([stale], out)
    assert not (out / "sae" / "inputs.json").exists()
    (stale / TRAINED_ON).unlink()
    with pytest.raises(LayerwiseError, match="which layer files this SAE was trained on is unknown"):
        publish_saes([stale], out)
