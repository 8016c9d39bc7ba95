"""Difference-of-means directions, effect sizes and the column-wise statistics, against direct computations."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from layerwise.analysis import directions, stats
from layerwise.analysis.labels import class_counts, encode_labels, fold_splits
from layerwise.analysis.pooling import pool_file
from layerwise.analysis.views import plan_views
from layerwise.layerfile.reader import open_layer_file
from tests.support.analysis_synthetic import SyntheticSpec, write_synthetic_run


def test_direction_recovers_the_planted_direction_from_layer_files(tmp_path):
    run = write_synthetic_run(tmp_path, SyntheticSpec(n_samples=60, hidden=24, layers=(0,), languages=("english",),
                                                      signal={"image": 3.0}, dtype=torch.bfloat16, layout="ragged"))
    lf = open_layer_file(run.paths[0])
    pooled = pool_file(lf, plan_views("all", True)[0])
    idx, y = encode_labels(lf.genders, ("male", "female"), pooled["image"].valid)
    d = directions.mean_difference(pooled["image"].vectors[idx], y)
    assert directions.cosine(d, run.direction) > 0.9                       # female - male points along +u
    d_cap = directions.mean_difference(pooled["caption"].vectors[idx], y)  # no signal in captions
    assert abs(directions.cosine(d_cap, run.direction)) < 0.5


def test_effect_size_matches_a_direct_computation():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 6))
    y = np.array([0] * 20 + [1] * 30)
    X[y == 1] += np.array([1.0, 0, 0, 0.5, 0, 0])
    w = directions.mean_difference(X, y)
    np.testing.assert_allclose(w, X[20:].mean(0) - X[:20].mean(0))
    u = w / np.linalg.norm(w)
    p0, p1 = X[y == 0] @ u, X[y == 1] @ u
    s = np.sqrt((19 * p0.var(ddof=1) + 29 * p1.var(ddof=1)) / 48)
    assert directions.projection_effect_size(X, y, w) == pytest.approx((p1.mean() - p0.mean()) / s, rel=1e-12)
    assert directions.projection_effect_size(X, y, 3 * w) == pytest.approx((p1.mean() - p0.mean()) / s, rel=1e-12)


def test_heldout_effect_size_is_near_zero_without_signal_but_insample_is_not():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((60, 200))
    y = np.arange(60) % 2
    held, _ = directions.heldout_effect_size(X, y, fold_splits(y, 5, 0))
    insample = directions.projection_effect_size(X, y, directions.mean_difference(X, y))
    assert insample > 2.0           # many dimensions: the mean difference fits the noise
    assert abs(held) < 0.6


def test_auroc_and_smd_match_direct_computations():
    rng = np.random.default_rng(2)
    Z = np.maximum(rng.standard_normal((40, 5)), 0)          # ties at 0, like SAE latents
    y = np.array([0, 1] * 20)
    Z[y == 1, 2] += 1.0
    got = stats.auroc(Z, y)
    for j in range(5):
        assert got[j] == pytest.approx(roc_auc_score(y, Z[:, j]))
        a, b = Z[y == 0, j], Z[y == 1, j]
        pooled = np.sqrt((19 * a.var(ddof=1) + 19 * b.var(ddof=1)) / 38)
        assert stats.standardized_mean_difference(Z, y)[j] == pytest.approx((b.mean() - a.mean()) / pooled)
    const = stats.mann_whitney_p(np.zeros((40, 2)), y)
    assert (const == 1.0).all()


def test_benjamini_hochberg_matches_the_step_up_rule():
    rng = np.random.default_rng(3)
    p = np.concatenate([rng.uniform(0, 0.01, 5), rng.uniform(0, 1, 45)])
    q = stats.benjamini_hochberg(p)
    m = len(p)
    for alpha in (0.01, 0.05, 0.2):
        order = np.sort(p)
        ok = np.flatnonzero(order <= alpha * np.arange(1, m + 1) / m)
        k = ok.max() + 1 if len(ok) else 0                    # reject the k smallest p-values
        assert (q <= alpha).sum() == k
        if k:
            assert set(np.flatnonzero(q <= alpha)) == set(np.argsort(p)[:k])
    assert (q >= p).all() and (q <= 1).all()


def test_labels_exclude_unknown_and_count_classes():
    idx, y = encode_labels(["male", "unknown", "female", "female", "other"], ("male", "female"))
    assert idx.tolist() == [0, 2, 3] and y.tolist() == [0, 1, 1]
    assert class_counts(y, ("male", "female")) == "female:2,male:1"


def test_grouped_folds_keep_each_image_on_one_side(tmp_path):
    from layerwise.analysis.labels import groups_from_samplesheet

    sheet = tmp_path / "s.csv"
    rows = ["row,sample_id,image,gender,image_sha256"]
    rows += [f"{i},s{i},/img/{i // 2}.jpg,{'male' if i % 4 < 2 else 'female'},sha{i // 2}" for i in range(40)]
    sheet.write_text("\n".join(rows) + "\n")
    groups = groups_from_samplesheet(sheet)
    assert groups["s0"] == groups["s1"] == "sha0" and groups["s2"] == "sha1"
    y = np.array([0 if i % 4 < 2 else 1 for i in range(40)])
    g = np.array([groups[f"s{i}"] for i in range(40)])
    splits = fold_splits(y, 5, 0, g)
    assert len(splits) == 5
    for tr, te in splits:
        assert not set(g[tr]) & set(g[te])
