"""Gender probes on layer files with planted signals: the answer is known, not taken from the code."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from layerwise.analysis import analyze
from layerwise.analysis.labels import fold_splits
from layerwise.analysis.probes import probe
from tests.support.analysis_synthetic import SyntheticSpec, write_synthetic_run

PERM = 19                     # smallest possible p-value 1/20
FAST = dict(permutations=PERM, folds=5, seed=0, report=False)


def _row(df, **key):
    sel = np.ones(len(df), bool)
    for k, v in key.items():
        sel &= (df[k] == v).to_numpy()
    assert sel.sum() == 1, key
    return df[sel].iloc[0]


def test_signal_in_image_tokens_decodes_from_the_image_view_only(tmp_path):
    run = write_synthetic_run(tmp_path / "files", SyntheticSpec(
        n_samples=60, hidden=16, layers=(3,), languages=("english",), signal={"image": 3.0},
        dtype=torch.bfloat16, layout="padded"))
    res = analyze(run.paths, tmp_path / "out", views=("image", "caption"), **FAST)
    probes = res["probes"]
    assert len(probes) == 2
    img = _row(probes, view="image")
    cap = _row(probes, view="caption")
    assert img.accuracy > 0.9 and img.accuracy > img.control_q95 + 0.2
    assert img.p_value == pytest.approx(1 / (1 + PERM))
    assert abs(cap.accuracy - cap.control_accuracy) < 3 * cap.control_std + 0.05
    assert cap.p_value > 0.05
    # 60 samples: 24 male, 24 female, 12 unknown (excluded)
    assert img.n_samples == 48 and img.classes == "female:24,male:24" and img.chance == 0.5
    d = res["directions"]
    assert _row(d, view="image").heldout_effect_size > 2.0
    assert abs(_row(d, view="caption").heldout_effect_size) < 1.0


def test_a_direction_shared_by_two_languages_transfers(tmp_path):
    run = write_synthetic_run(tmp_path / "files", SyntheticSpec(
        n_samples=60, hidden=16, layers=(2,), signal={"image": 3.0}, layout="ragged", dtype=torch.bfloat16))
    res = analyze(run.paths, tmp_path / "out", views=("image", "caption"), permutations=5, report=False)
    d = res["directions"]
    assert len(d) == 4 and set(zip(d.language, d.other_language)) == {("english", "arabic"), ("arabic", "english")}
    img = _row(d, language="english", view="image")
    cap = _row(d, language="english", view="caption")
    # the same planted direction in both languages; content shared by a sample's two languages makes
    # even shuffled-label directions similar, so the cosine is read against its control
    assert img.direction_cosine > 0.9 and img.direction_cosine > img.direction_cosine_control
    assert img.direction_cosine_p == pytest.approx(1 / 6)
    # a probe trained on one language decodes the other once the language offset is removed
    assert img.within_accuracy > 0.9 and img.centered_transfer_accuracy > 0.9
    assert _row(d, language="arabic", view="image").centered_transfer_accuracy > 0.9
    assert abs(cap.centered_transfer_accuracy - 0.5) < 0.25
    assert img.n_aligned == 48


def test_signal_in_caption_tokens_decodes_from_the_caption_view_only(tmp_path):
    run = write_synthetic_run(tmp_path / "files", SyntheticSpec(
        n_samples=60, hidden=16, layers=(0,), languages=("arabic",), signal={"caption": 3.0},
        dtype=torch.float32, layout="ragged"))
    res = analyze(run.paths, tmp_path / "out", views=("image", "caption"), **{**FAST, "folds": 4})
    probes = res["probes"]
    cap = _row(probes, view="caption")
    img = _row(probes, view="image")
    assert cap.accuracy > 0.9 and cap.p_value == pytest.approx(1 / (1 + PERM))
    assert abs(img.accuracy - img.control_accuracy) < 3 * img.control_std + 0.05 and img.p_value > 0.05
    assert any("one language" in n["message"] for n in res["notes"])


def test_labels_independent_of_everything_stay_in_the_control_band(tmp_path):
    run = write_synthetic_run(tmp_path / "files", SyntheticSpec(
        n_samples=60, hidden=16, layers=(1,), languages=("english",), signal={}, seed=5))
    res = analyze(run.paths, tmp_path / "out", permutations=9, folds=3, report=False)
    probes = res["probes"]
    assert sorted(probes.view) == ["all", "caption", "image", "prompt"]
    for r in probes.itertuples():
        assert abs(r.accuracy - r.control_accuracy) < 3 * r.control_std + 0.05, r
        assert 0.25 < r.control_accuracy < 0.75 and r.control_std > 0


def test_p_value_counts_controls_at_or_above_the_observed_accuracy():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 5))
    y = np.arange(40) % 2
    X[:, 0] += 0.4 * y                       # weak signal: some controls beat it
    splits = fold_splits(y, 4, 0)
    r = probe(X, y, splits, permutations=12, seed=1)
    assert r.p_value == pytest.approx((1 + (r.control_scores >= r.accuracy - 1e-12).sum()) / 13)
    assert r.control_accuracy == pytest.approx(r.control_scores.mean())
    assert r.accuracy == pytest.approx(r.fold_scores.mean()) and len(r.fold_scores) == 4
    again = probe(X, y, splits, permutations=12, seed=1)          # fixed seeds: identical
    np.testing.assert_array_equal(again.control_scores, r.control_scores)
