"""SAE latents associated with gender, through the SAE interface (`encode`) with hand-made encoders."""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from layerwise.analysis import analyze
from layerwise.analysis.pooling import pool_file
from layerwise.analysis.sae import SaeLatentPooler, latent_associations, load_sae, parse_sae_dirs
from layerwise.analysis.views import plan_views
from layerwise.core.errors import LayerwiseError
from layerwise.layerfile.reader import open_layer_file
from tests.support.analysis_synthetic import SyntheticSpec, write_synthetic_run


class PlantedEncoder:
    """d_sae latents: latent 3 reads the planted gender direction and fires only well past it
    (female tokens); the others read random directions orthogonal to it."""

    def __init__(self, direction: np.ndarray, d_sae: int = 16, seed: int = 0):
        h = len(direction)
        u = torch.tensor(direction, dtype=torch.float32)
        W = torch.randn(h, d_sae, generator=torch.Generator().manual_seed(seed))
        W -= torch.outer(u, u @ W)                        # orthogonal to u
        W /= W.norm(dim=0, keepdim=True)
        W[:, 3] = u
        self.W, self.b = W, torch.zeros(d_sae)
        self.b[3] = -1.5
        self.calls = 0

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.relu(x @ self.W + self.b)


def test_planted_latent_is_found_and_only_it_passes_bh(tmp_path):
    run = write_synthetic_run(tmp_path / "files", SyntheticSpec(
        n_samples=80, hidden=16, layers=(0, 1), languages=("english",), signal={"image": 3.0},
        layout="ragged", dtype=torch.bfloat16))
    enc = PlantedEncoder(run.direction)
    res = analyze(run.paths, tmp_path / "out", sae_dirs={1: enc}, views=("image", "caption"),
                  sae_views=("image",), permutations=3, folds=3, report=False, sae_top_k=5)
    sae = res["sae_features"]
    assert enc.calls > 0 and (tmp_path / "out" / "sae_features.parquet").exists()
    assert set(sae.layer) == {1} and set(sae.view) == {"image"}           # only the layer with an SAE
    top = sae.sort_values("rank").iloc[0]
    assert top.latent == 3 and top["rank"] == 1
    assert top.auroc > 0.95 and top.smd > 2 and top.passes_bh and top.q_value < 0.01
    assert top.firing_rate_b > 0.9 and top.firing_rate_a < 0.1 and top.mean_b > top.mean_a
    passing = sae[sae.passes_bh]
    assert passing.latent.tolist() == [3] and (sae.n_passing == 1).all()
    assert (sae.d_sae == 16).all() and set(sae.classes) == {"female:32,male:32"}
    assert top.n_selection + top.n_heldout == 64 and set(sae.sample_pool) == {"all"}
    assert len(sae) == 5                                                    # top-k (the passing one among them)
    assert any("training samples are unknown" in n["message"] for n in res["notes"])


def test_an_sae_folder_is_loaded_and_its_training_samples_are_left_out(tmp_path, monkeypatch):
    run = write_synthetic_run(tmp_path / "files", SyntheticSpec(
        n_samples=100, hidden=16, layers=(0,), languages=("english",), signal={"image": 3.0}))
    folder = tmp_path / "saes" / "layer_0"
    folder.mkdir(parents=True)
    held = run.sample_ids[:60]                                  # layerwise.sae's split.json: train / validation
    (folder / "split.json").write_text(json.dumps({"train": run.sample_ids[60:], "validation": held}))
    enc = PlantedEncoder(run.direction)
    loads = []

    class FakeSAE:
        @staticmethod
        def load_from_disk(path, device="cpu"):
            loads.append(Path(path))
            return enc

    monkeypatch.setitem(sys.modules, "sae_lens", types.SimpleNamespace(SAE=FakeSAE))
    dirs = parse_sae_dirs([str(tmp_path / "saes")])
    assert dirs == {0: folder}
    res = analyze(run.paths, tmp_path / "out", sae_dirs=dirs, views=("image",), permutations=2, folds=3, report=False)
    assert loads == [folder]
    sae = res["sae_features"]
    labelled_held = sum(g in ("male", "female") for sid, g in zip(run.sample_ids, run.genders) if sid in set(held))
    assert (sae.n_selection + sae.n_heldout == labelled_held).all() and set(sae.sample_pool) == {"sae_held_out"}
    assert sae.sort_values("rank").iloc[0].latent == 3


def test_latent_pooler_means_the_encoded_positions_of_each_view(tmp_path):
    run = write_synthetic_run(tmp_path, SyntheticSpec(n_samples=7, hidden=8, layers=(0,), languages=("english",)))
    lf = open_layer_file(run.paths[0])
    plan = plan_views("all", True)[0]
    enc = PlantedEncoder(run.direction, d_sae=6)
    pooler = SaeLatentPooler(enc, lf.n_samples, {v: plan[v] for v in ("image", "caption")}, batch_rows=5)
    pool_file(lf, plan, chunk_bytes=2 * 40 * 8 * 4, consumers=[pooler])
    out = pooler.result()
    d = torch.load(run.paths[0], weights_only=True)
    for view, code in (("image", 2), ("caption", 4)):
        Z, valid, rate = out[view]
        assert valid.all()
        for i in range(7):
            n = int(d["lengths"][i])
            rows, kinds = d["activations"][i, :n], d["token_kinds"][i, :n]
            want = enc.encode(rows[kinds == code]).mean(0).numpy()
            np.testing.assert_allclose(Z[i], want, rtol=1e-5, atol=1e-6)
        assert rate.shape == (6,) and ((0 <= rate) & (rate <= 1)).all()


def test_no_association_passes_bh_under_independent_labels():
    rng = np.random.default_rng(0)
    Z = np.maximum(rng.standard_normal((100, 50)), 0)
    y = np.arange(100) % 2
    df, why = latent_associations(Z, y, ("male", "female"), top_k=10, seed=0)
    assert why is None and not df.passes_bh.any() and (df.n_passing == 0).all() and len(df) == 10
    df, why = latent_associations(Z[:6], y[:6], ("male", "female"))
    assert df is None and "too few" in why


def test_load_sae_calls_sae_lens_load_from_disk(tmp_path, monkeypatch):
    calls = []

    class FakeSAE:
        @staticmethod
        def load_from_disk(path, device="cpu"):
            calls.append((path, device))
            return "loaded"

    monkeypatch.setitem(sys.modules, "sae_lens", types.SimpleNamespace(SAE=FakeSAE))
    assert load_sae(tmp_path, device="cuda") == "loaded" and calls == [(tmp_path, "cuda")]
    with pytest.raises(LayerwiseError, match="does not exist"):
        load_sae(tmp_path / "missing")


def test_parse_sae_dirs(tmp_path):
    for name in ("layer_3", "layer10", "layer_4_arabic", "12", "notes"):
        (tmp_path / name).mkdir()
    assert parse_sae_dirs([str(tmp_path)]) == {3: tmp_path / "layer_3", 10: tmp_path / "layer10",
                                               (4, "arabic"): tmp_path / "layer_4_arabic"}
    assert parse_sae_dirs(["5=/x/y", "6:english=/z"]) == {5: Path("/x/y"), (6, "english"): Path("/z")}
    with pytest.raises(LayerwiseError):
        parse_sae_dirs([str(tmp_path / "nope")])


def test_a_real_saelens_sae_round_trips(tmp_path):
    """A real SAELens SAE through the analysis path (sae_lens is imported once per session by the SAE tests)."""
    from sae_lens import StandardSAE, StandardSAEConfig

    sae = StandardSAE(StandardSAEConfig(d_in=8, d_sae=12))
    sae.save_model(tmp_path / "sae")
    loaded = load_sae(tmp_path / "sae")
    run = write_synthetic_run(tmp_path / "f", SyntheticSpec(n_samples=5, hidden=8, layers=(0,), languages=("english",)))
    lf = open_layer_file(run.paths[0])
    plan = plan_views("all", True)[0]
    pooler = SaeLatentPooler(loaded, lf.n_samples, {"caption": plan["caption"]})
    pool_file(lf, plan, consumers=[pooler])
    Z, valid, _ = pooler.result()["caption"]
    assert Z.shape == (5, 12) and valid.all()
