"""Statistics that must hold on views with no information: permutation controls split their folds
on the permuted labels, undefined cosines are NaN (with their p-values), and folds grouped by
image say plainly why they cannot be made. Small synthetic numpy data, no pipeline run."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from layerwise.analysis import analyze, crosslingual
from layerwise.analysis.labels import fold_splits, permuted_labels, usable
from layerwise.analysis.probes import probe
from layerwise.analysis.run import Options, _direction_cosines
from layerwise.layerfile.reader import open_layer_file
from tests.support.analysis_synthetic import SyntheticSpec, write_synthetic_run

PERM = 19                     # smallest possible p-value 1/20


def _labels(n_male: int, n_female: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.array([0] * n_male + [1] * n_female))


# -- 1. the permutation control re-splits its folds on the permuted labels ---------------------
@pytest.mark.parametrize("counts", [(20, 20), (22, 18)])
def test_a_constant_view_scores_its_control_exactly_and_is_not_significant(counts):
    """Identical vectors in every sample: the probe predicts the training folds' majority, observed
    and permuted alike. Folds stratified for the true labels put the permuted labels off balance
    (control ~0.39 against an observed 0.5, p = 1/20 before the fix)."""
    y = _labels(*counts)
    X = np.tile(np.random.default_rng(1).standard_normal(8), (len(y), 1))
    r = probe(X, y, fold_splits(y, 5, 0), permutations=PERM, seed=0)
    assert r.accuracy == pytest.approx(max(counts) / len(y), abs=0.03)
    assert r.control_accuracy == pytest.approx(r.accuracy, abs=1e-9) and r.control_std == pytest.approx(0)
    assert r.p_value == 1.0


def test_a_constant_view_with_grouped_folds_is_not_significant():
    y = np.repeat(_labels(10, 10, seed=3), 2)            # 20 images, two samples (same label) each
    groups = np.repeat(np.arange(20), 2).astype(str)
    X = np.ones((40, 4))
    r = probe(X, y, fold_splits(y, 5, 0, groups), groups=groups, permutations=PERM, seed=0)
    assert r.accuracy == 0.5 and r.control_accuracy == pytest.approx(0.5) and r.p_value == 1.0


def test_a_planted_signal_still_beats_every_control():
    rng = np.random.default_rng(2)
    y = _labels(20, 20, seed=2)
    X = rng.standard_normal((40, 6))
    X[:, 0] += 3.0 * (2 * y - 1)
    r = probe(X, y, fold_splits(y, 5, 0), permutations=PERM, seed=0)
    assert r.accuracy > 0.9 and r.control_accuracy < 0.7
    assert r.p_value == pytest.approx(1 / (1 + PERM))


def test_null_p_values_are_not_systematically_small():
    """Labels independent of noise X: p is roughly uniform, its mean near 1/2 (it would sit low if
    the controls were handicapped by unbalanced folds)."""
    ps = []
    for s in range(8):
        rng = np.random.default_rng(100 + s)
        X, y = rng.standard_normal((30, 4)), _labels(15, 15, seed=100 + s)
        ps.append(probe(X, y, fold_splits(y, 3, s), permutations=9, seed=s).p_value)
    assert 0.3 < np.mean(ps) < 0.9 and sum(p <= 0.1 for p in ps) <= 1, ps


def test_the_control_is_deterministic():
    rng = np.random.default_rng(4)
    y = _labels(12, 12, seed=4)
    X = rng.standard_normal((24, 3))
    groups = np.arange(24).astype(str)
    for g in (None, groups):
        a = probe(X, y, fold_splits(y, 3, 7, g), groups=g, permutations=6, seed=7)
        b = probe(X, y, fold_splits(y, 3, 7, g), groups=g, permutations=6, seed=7)
        np.testing.assert_array_equal(a.control_scores, b.control_scores)


def test_labels_are_permuted_by_group_when_groups_share_a_label():
    rng = np.random.default_rng(0)
    y = np.repeat(_labels(6, 4, seed=5), 3)              # 10 images, three samples each
    groups = np.repeat([f"img{k}" for k in range(10)], 3)
    for _ in range(5):
        yp = permuted_labels(y, rng, groups)
        assert (yp.reshape(10, 3) == yp.reshape(10, 3)[:, :1]).all()     # a group keeps one label
        assert sorted(yp[::3]) == sorted(y[::3])                          # the groups' labels, permuted
    mixed = y.copy()
    mixed[0] = 1 - mixed[0]                              # a group with two labels: samples are permuted
    assert sorted(permuted_labels(mixed, rng, groups)) == sorted(mixed)
    np.testing.assert_array_equal(permuted_labels(y, np.random.default_rng(9)),
                                  np.random.default_rng(9).permutation(y))


# -- 2. an undefined direction cosine has no p-value --------------------------------------------
def test_a_zero_direction_has_a_nan_cosine_and_a_nan_p_value():
    y = _labels(10, 14, seed=6)
    Xa = np.tile(np.arange(5.0), (24, 1))                # no difference of class means
    Xb = np.random.default_rng(6).standard_normal((24, 5))
    got = _direction_cosines(Xa, Xb, y, Options(permutations=PERM))
    assert np.isnan(got["direction_cosine"]) and np.isnan(got["direction_cosine_p"])
    rng = np.random.default_rng(7)
    u = 3.0 * np.outer(2 * y - 1, np.ones(5))          # the same planted direction in both languages
    ok = _direction_cosines(rng.standard_normal((24, 5)) + u, rng.standard_normal((24, 5)) + u, y,
                            Options(permutations=PERM))
    assert ok["direction_cosine"] > 0.9 and ok["direction_cosine_p"] == pytest.approx(1 / (1 + PERM))


# -- 3. centered cosines of vectors that centering leaves at zero are NaN ------------------------
def test_centered_cosine_of_a_view_that_is_the_same_in_every_sample_is_nan():
    v = np.random.default_rng(7).standard_normal(16).astype(np.float32) * 37
    A = np.tile(v, (40, 1))
    sim = crosslingual.similarity(A, A.copy(), np.random.default_rng(0))
    assert sim["matched_cosine"] == pytest.approx(1.0)
    for key in ("centered_matched_cosine", "centered_mismatched_cosine", "centered_cosine_gap",
                "centered_matched_cosine_std"):
        assert np.isnan(sim[key]), (key, sim[key])
    # float64 leftovers (the mean of identical float64 rows is not exact) count as zero as well
    w = np.random.default_rng(8).standard_normal(16) * np.pi
    C = crosslingual.centered(np.tile(w, (37, 1)))
    assert np.isnan(C).all()
    # distinct rows keep their centered cosine: the same sample in both languages is 1
    R = np.random.default_rng(9).standard_normal((30, 16)) + 50
    assert crosslingual.similarity(R, R.copy(), np.random.default_rng(0))["centered_matched_cosine"] == \
        pytest.approx(1.0)


def test_undefined_cosines_are_nan_in_the_tables_with_notes(tmp_path):
    """noise 0 and no sample content: every view is the language's offset, the same in every sample."""
    run = write_synthetic_run(tmp_path / "files", SyntheticSpec(
        n_samples=40, hidden=8, layers=(0,), signal={}, noise=0.0, shared=0.0, dtype=torch.float32))
    res = analyze(run.paths, tmp_path / "out", views=("image",), permutations=5, folds=4, report=False)
    p = res["probes"]
    assert (p.p_value == 1.0).all() and (p.control_accuracy == p.accuracy).all(), p
    c, d = res["crosslingual"], res["directions"]
    assert len(c) == 1 and np.isnan(c.centered_matched_cosine.iloc[0]) and np.isnan(c.centered_cosine_gap.iloc[0])
    assert len(d) == 2 and d.direction_cosine.isna().all() and d.direction_cosine_p.isna().all()
    messages = [n["message"] for n in res["notes"]]
    assert any(m.startswith("centered cosines of english and arabic undefined") for m in messages), messages
    assert any(m.startswith("direction cosine english<->arabic undefined") for m in messages), messages


# -- 4. grouped folds with fewer images than folds ----------------------------------------------
def test_fewer_images_than_folds_is_explained():
    y = _labels(10, 10)
    three = np.array([f"img{i % 3}" for i in range(20)])
    why = usable(y, 2, 5, three)
    assert why.startswith("only 3 distinct image(s) among the 20 samples, fewer than the 5 folds")
    assert "folds are grouped by image" in why and "use at most" in why
    assert usable(y, 2, 5) is None                       # without groups the split is possible
    per_class = np.where(y == 0, "shared-male-image", np.array([f"f{i}" for i in range(20)]))
    why = usable(y, 2, 5, per_class)
    assert why.startswith("the smallest class has only 1 distinct image(s)") and "fewer folds cannot help" in why
    assert usable(y, 2, 5, np.array([f"s{i}" for i in range(20)])) is None


def test_analyze_notes_why_grouped_folds_cannot_be_made(tmp_path):
    run = write_synthetic_run(tmp_path / "files", SyntheticSpec(n_samples=40, hidden=8, layers=(0,),
                                                                languages=("english",), signal={"image": 3.0}))
    ids = open_layer_file(run.paths[0]).sample_ids
    groups = {sid: f"img{i % 3}" for i, sid in enumerate(ids)}
    res = analyze(run.paths, tmp_path / "out", views=("image",), permutations=3, folds=5, groups=groups,
                  report=False)
    assert res["probes"].empty
    notes = [n for n in res["notes"] if n["stage"] == "probes"]
    assert len(notes) == 1 and "only 3 distinct image(s)" in notes[0]["message"], res["notes"]
    assert "folds are grouped by image" in notes[0]["message"] and "use at most 3 folds" in notes[0]["message"]
