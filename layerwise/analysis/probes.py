"""Logistic-regression probes: held-out accuracy, a shuffled-label control and transfer.

The probe is `StandardScaler -> LogisticRegression` in one Pipeline, so the standardisation is
fitted on the training folds only. The control refits the same probe with the labels permuted
(seeded) and the folds split again, stratified (and grouped) on the permuted labels, as the
observed folds are on the true ones; the permutation p-value is
(1 + #{control >= observed}) / (1 + n_perm).

Why the folds are split again: folds stratified for the true labels put the permuted labels off
balance in every fold, which alone costs a probe accuracy (a probe with nothing to learn predicts
the training folds' majority, which is then the test fold's minority). Controls scored on those
folds sit below chance, and an uninformative view's exact 0.5 would look significant.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from layerwise.analysis.labels import fold_splits, permuted_labels

MAX_ITER = 1000


def make_probe(C: float = 1.0, seed: int = 0) -> Pipeline:
    return Pipeline([("scale", StandardScaler()),
                     ("logreg", LogisticRegression(C=C, max_iter=MAX_ITER, random_state=seed))])


def _fit_score(X_train, y_train, X_test, y_test, C, seed) -> tuple[float, int]:
    """(accuracy on the test rows, 1 if the solver did not converge)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model = make_probe(C, seed).fit(X_train, y_train)
    acc = float((model.predict(X_test) == y_test).mean())
    return acc, int(any(issubclass(w.category, ConvergenceWarning) for w in caught))


def cv_scores(X: np.ndarray, y: np.ndarray, splits, C: float = 1.0, seed: int = 0) -> tuple[np.ndarray, int]:
    """Per-fold held-out accuracy and the number of fits that did not converge.

    BLAS/OpenMP run single-threaded here: the fits are small and many, and threads only contend
    (parallelism belongs at the permutation level, `n_jobs`).
    """
    with threadpool_limits(limits=1):
        out = [_fit_score(X[tr], y[tr], X[te], y[te], C, seed) for tr, te in splits]
    return np.array([a for a, _ in out]), sum(w for _, w in out)


@dataclass
class ProbeResult:
    accuracy: float            # mean held-out accuracy over the folds
    accuracy_std: float        # std of the fold accuracies
    control_accuracy: float    # mean over permutations of the shuffled-label held-out accuracy
    control_std: float         # std over permutations of that accuracy
    control_q95: float         # 95th percentile of the control accuracies
    p_value: float             # (1 + #control >= observed) / (1 + n_perm)
    chance: float              # majority-class rate
    not_converged: int         # fits that hit max_iter (observed and controls)
    fold_scores: np.ndarray
    control_scores: np.ndarray


def probe(X: np.ndarray, y: np.ndarray, splits, *, groups: np.ndarray | None = None, permutations: int = 20,
          seed: int = 0, C: float = 1.0, n_jobs: int = 1) -> ProbeResult:
    """Held-out accuracy of a gender probe on X [n, H] with labels y, and its shuffled-label control.

    `splits` are the folds of the observed accuracy (`labels.fold_splits(y, folds, seed, groups)`).
    Every permutation gets its own folds, `fold_splits(y_perm, len(splits), seed, groups)`:
    stratified on the permuted labels and, with `groups`, grouped (and the labels permuted by
    group, `labels.permuted_labels`). Pass the `groups` the observed folds were grouped by.
    """
    scores, warn = cv_scores(X, y, splits, C, seed)
    rng = np.random.default_rng(seed)
    perms = [permuted_labels(y, rng, groups) for _ in range(permutations)]
    with warnings.catch_warnings():
        # permuting by group changes the class counts: a class may fall below the folds (sklearn warns)
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        perm_splits = [fold_splits(yp, len(splits), seed, groups) for yp in perms]
    if n_jobs != 1 and permutations > 1:
        from joblib import Parallel, delayed

        runs = Parallel(n_jobs=n_jobs)(delayed(cv_scores)(X, yp, sp, C, seed) for yp, sp in zip(perms, perm_splits))
    else:
        runs = [cv_scores(X, yp, sp, C, seed) for yp, sp in zip(perms, perm_splits)]
    control = np.array([s.mean() for s, _ in runs])
    warn += sum(w for _, w in runs)
    observed = float(scores.mean())
    # A control "ties" the observed accuracy within float noise: counted as >= (conservative).
    p = (1 + int((control >= observed - 1e-12).sum())) / (1 + permutations)
    counts = np.bincount(y)
    return ProbeResult(
        accuracy=observed, accuracy_std=float(scores.std()),
        control_accuracy=float(control.mean()) if permutations else float("nan"),
        control_std=float(control.std()) if permutations else float("nan"),
        control_q95=float(np.quantile(control, 0.95)) if permutations else float("nan"),
        p_value=float(p) if permutations else float("nan"), chance=float(counts.max() / counts.sum()),
        not_converged=int(warn), fold_scores=scores, control_scores=control,
    )


def transfer_scores(X_src: np.ndarray, X_dst: np.ndarray, y: np.ndarray, splits, C: float = 1.0, seed: int = 0
                    ) -> dict[str, np.ndarray]:
    """Rows aligned by sample: per fold, train on X_src[train] and score the held-out samples.

    Returns per-fold accuracies: ``within`` (X_src[test]), ``transfer`` (X_dst[test], as is) and
    ``centered_transfer`` (X_dst[test] shifted by mean(X_src[train]) - mean(X_dst[train]): the
    language's offset removed without labels). Testing on held-out samples only keeps the image
    that both languages share out of training, so transfer measures a shared gender code, not a
    remembered sample.
    """
    out: dict[str, list[float]] = {"within": [], "transfer": [], "centered_transfer": []}
    with threadpool_limits(limits=1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for tr, te in splits:
            model = make_probe(C, seed).fit(X_src[tr], y[tr])
            shift = X_src[tr].mean(axis=0) - X_dst[tr].mean(axis=0)
            out["within"].append(float((model.predict(X_src[te]) == y[te]).mean()))
            out["transfer"].append(float((model.predict(X_dst[te]) == y[te]).mean()))
            out["centered_transfer"].append(float((model.predict(X_dst[te] + shift) == y[te]).mean()))
    return {k: np.array(v) for k, v in out.items()}
