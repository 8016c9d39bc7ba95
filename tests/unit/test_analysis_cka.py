"""Linear CKA against the HSIC formula, its invariances, the Gram store; cross-lingual similarity."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ortho_group

from layerwise.analysis.cka import GramStore, linear_cka
from layerwise.analysis.crosslingual import derangement, similarity


def hsic_cka(X, Y):
    """Kornblith et al. 2019, eq. (3)-(4), written out: HSIC(K, L) = tr(K H L H) / (n-1)^2."""
    n = len(X)
    H = np.eye(n) - np.ones((n, n)) / n
    K, L = X @ X.T, Y @ Y.T

    def hsic(A, B):
        return np.trace(A @ H @ B @ H) / (n - 1) ** 2

    return hsic(K, L) / np.sqrt(hsic(K, K) * hsic(L, L))


@pytest.mark.parametrize("n,p,q", [(30, 50, 40), (200, 5, 7)])   # Gram form and feature form
def test_cka_matches_the_hsic_formula(n, p, q):
    rng = np.random.default_rng(n)
    X = rng.standard_normal((n, p)) + 3.0
    Y = X[:, :min(p, q)] @ rng.standard_normal((min(p, q), q)) + rng.standard_normal((n, q))
    assert linear_cka(X, Y) == pytest.approx(hsic_cka(X, Y), rel=1e-9)
    assert linear_cka(X, X) == pytest.approx(1.0, abs=1e-12)


def test_cka_invariances():
    rng = np.random.default_rng(1)
    X, Y = rng.standard_normal((40, 12)), rng.standard_normal((40, 9))
    Y[:, :3] += X[:, :3]
    base = linear_cka(X, Y)
    Q = ortho_group.rvs(12, random_state=2)
    assert linear_cka(X @ Q, Y) == pytest.approx(base, rel=1e-10)              # orthogonal transform
    assert linear_cka(7.5 * X, 0.01 * Y) == pytest.approx(base, rel=1e-10)     # isotropic scaling
    assert linear_cka(X + 100.0, Y) == pytest.approx(base, rel=1e-8)           # translation (centering)
    D = np.diag(np.linspace(0.1, 10, 12))
    assert abs(linear_cka(X @ D, Y) - base) > 1e-3                             # but not anisotropic scaling


def test_gram_store_all_pairs_equal_pairwise_cka(tmp_path):
    rng = np.random.default_rng(3)
    n = 25
    layers = {k: rng.standard_normal((n, 10)) + k for k in range(4)}
    layers[2] = layers[1] @ ortho_group.rvs(10, random_state=4) * 3.0         # same geometry as layer 1
    store = GramStore(n, tmp_path / "scratch")
    for k, X in layers.items():
        store.put("english", "caption", k, X, np.ones(n, bool))
    ls, mat, used = store.matrix("english", "caption")
    assert ls == [0, 1, 2, 3] and used == n
    for i in ls:
        for j in ls:
            assert mat[i, j] == pytest.approx(linear_cka(layers[i], layers[j]), abs=1e-5)
    assert mat[1, 2] == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(np.diag(mat), 1.0, atol=1e-6)
    store.close()
    assert not list((tmp_path / "scratch").glob("gram_*"))


def test_gram_store_uses_the_samples_valid_in_every_layer(tmp_path):
    rng = np.random.default_rng(5)
    n = 20
    X0, X1 = rng.standard_normal((n, 6)), rng.standard_normal((n, 6))
    X1[:, :2] += X0[:, :2]
    v0, v1 = np.ones(n, bool), np.ones(n, bool)
    v0[[2, 7]] = False
    v1[[7, 11]] = False
    X0[[2, 7]] = np.nan
    X1[[7, 11]] = np.nan
    store = GramStore(n)
    store.put("arabic", "image", 0, X0, v0)
    store.put("arabic", "image", 1, X1, v1)
    _, mat, used = store.matrix("arabic", "image")
    common = v0 & v1
    assert used == common.sum() == 17
    assert mat[0, 1] == pytest.approx(hsic_cka(X0[common], X1[common]), abs=1e-5)
    store.close()


def test_cka_over_fewer_than_three_samples_is_nan_not_one():
    """Two centred samples span one direction: linear CKA is 1 for any two unrelated layers (checked with the
    direct formula); the store reports NaN instead (one sample: 0/0, NaN too)."""
    rng = np.random.default_rng(7)
    X, Y = rng.standard_normal((2, 5)), rng.standard_normal((2, 8))
    assert hsic_cka(X, Y) == pytest.approx(1.0)          # the meaningless value the store must not report
    for n in (1, 2):
        store = GramStore(n)
        store.put("english", "all", 0, X[:n], np.ones(n, bool))
        store.put("english", "all", 1, Y[:n], np.ones(n, bool))
        _, mat, used = store.matrix("english", "all")
        assert used == n and np.isnan(mat).all()
        store.close()


def test_derangement_has_no_fixed_point():
    rng = np.random.default_rng(0)
    for n in (2, 3, 10, 101):
        d = derangement(n, rng)
        assert sorted(d) == list(range(n)) and not (d == np.arange(n)).any()


def test_matched_pairs_are_more_similar_than_mismatched():
    rng = np.random.default_rng(6)
    shared = rng.standard_normal((60, 16))
    A = shared + 0.5 * rng.standard_normal((60, 16)) + 5.0
    B = shared + 0.5 * rng.standard_normal((60, 16)) - 2.0
    s = similarity(A, B, np.random.default_rng(0))
    assert s["centered_matched_cosine"] > 0.7            # expected 1 / (1 + 0.5^2) = 0.8
    assert abs(s["centered_mismatched_cosine"]) < 0.2
    assert s["cosine_gap"] > 0 and s["centered_cosine_gap"] > 0.6
    assert s["cka"] == pytest.approx(linear_cka(A, B))
    # independent languages: no gap
    s0 = similarity(rng.standard_normal((60, 16)), rng.standard_normal((60, 16)), np.random.default_rng(0))
    assert abs(s0["centered_cosine_gap"]) < 0.1
