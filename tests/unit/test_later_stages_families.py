"""The later stages work unchanged on every model family's layer files: the hidden sizes and layer counts of
the families (2048, 3584, 4096; 18 to 40 layers), and a family whose sequence has no image tokens (Llama 3.2
Vision reads the image through cross-attention), for which the image view is reported as absent, not an error.
"""
from __future__ import annotations

import json

import pytest
import torch

from layerwise.analysis import analyze
from layerwise.layerfile.reader import open_layer_file
from tests.support import sae_synthetic
from tests.support.analysis_synthetic import SyntheticSpec, write_synthetic_run

pytestmark = pytest.mark.usefixtures("quiet_offline_trainer")


def test_a_family_without_image_tokens_has_its_image_view_reported_absent(tmp_path):
    run = write_synthetic_run(tmp_path / "files", SyntheticSpec(n_samples=40, hidden=16, layers=(0, 39), n_image=0,
                                                                languages=("english",), signal={"caption": 2.0}))
    result = analyze(run.paths, tmp_path / "analysis", folds=2, permutations=2)
    probes = json.loads((tmp_path / "analysis" / "analysis.json").read_text())
    views = {(n.get("layer"), n.get("view")): n["message"] for n in result["notes"] if n.get("stage") == "views"}
    for layer in (0, 39):   # absent, said once per layer file, and the other views are probed
        assert "no sample has a position of it" in views[(layer, "image")]
    import pandas as pd

    table = pd.read_parquet(tmp_path / "analysis" / "probes.parquet")
    assert "image" not in set(table.view) and {"caption", "prompt", "all"} <= set(table.view)
    assert set(table.layer) == {0, 39} and probes["outputs"]


@pytest.mark.parametrize("hidden, layer", [(2048, 17), (3584, 27), (4096, 39)])
def test_sae_training_on_family_sized_layer_files(tmp_path, hidden, layer):
    """A family's hidden size and last layer index (PaliGemma 18 x 2048, Qwen2-VL 28 x 3584, Llama 3.2 Vision
    40 x 4096): files read by the one reader, an SAE trained and its metrics recorded."""
    from layerwise.sae.options import SAEOptions
    from layerwise.sae.train import train_layer_sae

    files = sae_synthetic.write_planted_set(tmp_path / "data", layers=[layer], languages=["english"], n_samples=8,
                                            hidden=hidden, n_features=16, layout="ragged", dtype=torch.bfloat16)
    path = files[(layer, "english")]
    assert open_layer_file(path).hidden_size == hidden
    options = SAEOptions(architecture="topk", k=4, d_sae=32, epochs=1, batch_size=64, chunk_tokens=64,
                         buffer_tokens=128, validation_fraction=0.25, device="cpu", norm_estimate_batches=1)
    records = train_layer_sae([path], tmp_path / "sae", options)
    assert {r["split"] for r in records} == {"train", "validation"}
    assert all(r["layer"] == layer and r["d_in"] == hidden and r["d_sae"] == 32 for r in records)
    assert (tmp_path / "sae" / records[0]["sae_dir"] / "cfg.json").is_file()
