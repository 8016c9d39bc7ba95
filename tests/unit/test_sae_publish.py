"""PUBLISH_SAE's placement (layerwise.publish.sae), on small fake SAE folders: whole folders, stale ones
moved aside, metrics.parquet listing exactly the published SAEs."""
from __future__ import annotations

import json
import os

import pandas as pd
import pytest

from layerwise.core.errors import LayerwiseError
from layerwise.publish.sae import publish_saes
from layerwise.sae.metrics import METRIC_COLUMNS


def fake_sae(root, name, layer, ev):
    d = root / name
    d.mkdir(parents=True)
    (d / "cfg.json").write_text(json.dumps({"layer": layer}))
    (d / "sae_weights.safetensors").write_bytes(os.urandom(64))
    rec = {c: 0 for c in METRIC_COLUMNS}
    rec.update(layer=layer, language="pooled", languages="arabic,english", architecture="topk", split="validation",
               explained_variance=ev, fvu=1 - ev, mse=0.1, mean_l0=8.0, dead_fraction=0.0, sae_dir=name)
    (d / "metrics.json").write_text(json.dumps([rec]))
    return d


def test_publish_links_whole_folders_supersedes_stale_ones_and_lists_this_run(tmp_path):
    out = tmp_path / "results"
    first = [fake_sae(tmp_path / "w1", f"layer_{i}", i, 0.5) for i in (0, 1, 2)]
    publish_saes(first, out, "link", report=False)
    assert sorted(pd.read_parquet(out / "sae" / "metrics.parquet").layer) == [0, 1, 2]
    w = out / "sae" / "layer_1" / "sae_weights.safetensors"
    assert os.path.samefile(w, first[1] / "sae_weights.safetensors")       # a hard link, no copy

    second = [fake_sae(tmp_path / "w2", f"layer_{i}", i, 0.9) for i in (0, 1)]
    res = publish_saes(second, out, "copy", report=True)
    assert res["superseded"] == ["sae/layer_2"]
    assert sorted(p.name for p in (out / "sae").iterdir()) == ["layer_0", "layer_1", "metrics.parquet", "report.html"]
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
        publish_saes([a, b], tmp_path / "out")
    (tmp_path / "c" / "layer_3").mkdir(parents=True)
    with pytest.raises(LayerwiseError, match="not an SAE folder"):
        publish_saes([tmp_path / "c" / "layer_3"], tmp_path / "out")
