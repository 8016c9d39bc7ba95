"""The intervention's statistics: one summary row per (layers, feature_language, caption_language).

Gendered words of a caption = its `male` + `female` counts (layerwise.intervention.counts). Over the images that
have a caption in every condition and run of the group (the paired images):

- `base_count`, `targeted_count`: gendered words summed over the baseline / targeted captions;
- `change_pct` = 100 · (targeted − base) / base; the same for each random run, whose mean and sample std
  (ddof 1) are `random_mean`, `random_std`;
- `specificity` = |change_pct| − |random_mean| (percentage points); `ratio` = |change_pct| / |random_mean|
  (NaN when the random mean is 0);
- per image i, d_i = g_targeted(i) − mean over random runs of g_random(i); `mean_difference` = mean(d);
  `ci_low`, `ci_high`: the seeded percentile bootstrap 95 % CI of mean(d) (`bootstrap_ci`); `wilcoxon_p`:
  two-sided Wilcoxon signed-rank test of d (scipy, zeros dropped; NaN when every d_i is 0);
- `empirical_p` = (1 + #{random runs r: |count_r − base| ≥ |targeted − base|}) / (1 + runs), on counts, so it is
  defined even when the base count is 0.

A value that cannot be computed is NaN and the row's `note` says why.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from layerwise.intervention import outputs
from layerwise.intervention.options import InterventionOptions

N_RESAMPLES = 10_000
CI_LEVEL = 0.95
_BLOCK = 2_000_000        # bootstrap indices drawn per block (memory bound); the same stream as one draw

COUNT_COLUMNS = ("male", "female", "neutral", "words")


@dataclass
class Group:
    """The captions of one (layers, feature_language, caption_language), per condition, indexed by sample_id and
    restricted to the paired images (those with a baseline, a targeted and every random run's caption)."""

    layers: str
    feature_language: str
    caption_language: str
    baseline: pd.DataFrame
    targeted: pd.DataFrame
    random: dict[int, pd.DataFrame]
    images: list[str]
    notes: list[str] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.layers, self.feature_language, self.caption_language)

    def gendered(self, condition: str, run: int = 0) -> np.ndarray:
        """Gendered words per paired image (in `images` order) of a condition's captions."""
        df = {outputs.BASELINE: self.baseline, outputs.TARGETED: self.targeted}.get(condition)
        if condition == outputs.RANDOM:
            df = self.random[run]
        return (df["male"] + df["female"]).to_numpy(dtype=np.int64)

    def random_matrix(self) -> np.ndarray:
        """(runs, images) gendered words of the random runs, runs ascending."""
        if not self.random:
            return np.zeros((0, len(self.images)), dtype=np.int64)
        return np.stack([self.gendered(outputs.RANDOM, r) for r in sorted(self.random)])


def _blank(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)) or value == ""


def _prepare(captions: pd.DataFrame) -> pd.DataFrame:
    df = captions.copy()
    missing = [c for c in ("sample_id", "caption_language", "condition", *COUNT_COLUMNS) if c not in df.columns]
    if missing:
        raise ValueError(f"the captions table lacks the column(s) {', '.join(missing)} (count_captions fills the "
                         "counts)")
    for c in ("layers", "feature_language", "run", "image", "caption"):
        if c not in df.columns:
            df[c] = pd.NA
    df["layers"] = [None if _blank(v) else outputs.layers_label(v) for v in df["layers"]]
    df["feature_language"] = [None if _blank(v) else str(v) for v in df["feature_language"]]
    df["caption_language"] = df["caption_language"].astype(str)
    df["sample_id"] = df["sample_id"].astype(str)
    df["run"] = pd.to_numeric(df["run"], errors="coerce").fillna(0).astype(np.int64)
    bad = sorted(set(df["condition"].astype(str)) - {outputs.BASELINE, outputs.TARGETED, outputs.RANDOM})
    if bad:
        raise ValueError(f"unknown condition(s) in the captions table: {', '.join(bad)}")
    return df


def _by_sample(rows: pd.DataFrame, what: str, notes: list[str]) -> pd.DataFrame:
    """Rows indexed by sample_id; a sample with several rows keeps its first (a note when their captions differ)."""
    dup = rows.duplicated("sample_id", keep=False)
    if dup.any():
        differing = rows[dup].groupby("sample_id")["caption"].nunique(dropna=False)
        if (differing > 1).any():
            notes.append(f"{int((differing > 1).sum())} image(s) have several different {what} captions: the first "
                         "of each is used")
        rows = rows.drop_duplicates("sample_id", keep="first")
    return rows.set_index("sample_id")


def _baseline_rows(df: pd.DataFrame, key: tuple[str, str, str]) -> pd.DataFrame:
    """The baseline captions of a group: its own, or else those of its caption language (shared by every group of
    that caption language: a baseline does not depend on the layers or latents), its own layers first."""
    layers, feature, caption = key
    base = df[(df["condition"] == outputs.BASELINE) & (df["caption_language"] == caption)]
    own = base[(base["layers"] == layers) & (base["feature_language"] == feature)]
    if len(own):
        return own
    priority = np.where(base["layers"] == layers, 0, np.where(base["layers"].isna(), 1, 2))
    return base.assign(_p=priority).sort_values("_p", kind="stable").drop(columns="_p")


def groups(captions: pd.DataFrame) -> list[Group]:
    """Every (layers, feature_language, caption_language) with targeted or random captions, sorted by first
    layer, layers, feature language, caption language; each with its paired images."""
    df = _prepare(captions)
    edited = df[df["condition"] != outputs.BASELINE]
    keys = sorted({(r.layers, r.feature_language, r.caption_language)
                   for r in edited[["layers", "feature_language", "caption_language"]].itertuples()},
                  key=lambda k: (outputs.parse_layers(k[0] or "-1")[:1], k[0] or "", k[1] or "", k[2]))
    found = []
    for key in keys:
        layers, feature, caption = key
        notes: list[str] = []
        rows = edited[(edited["layers"].fillna("") == (layers or ""))
                      & (edited["feature_language"].fillna("") == (feature or ""))
                      & (edited["caption_language"] == caption)]
        baseline = _by_sample(_baseline_rows(df, key), outputs.BASELINE, notes)
        targeted = _by_sample(rows[rows["condition"] == outputs.TARGETED], outputs.TARGETED, notes)
        random_rows = rows[rows["condition"] == outputs.RANDOM]
        random = {int(r): _by_sample(g, f"random run {int(r)}", notes)
                  for r, g in random_rows.groupby("run", sort=True)}
        if not len(baseline):
            notes.append("no baseline captions")
        if not len(targeted):
            notes.append("no targeted captions")
        if not random:
            notes.append("no random runs")
        sets = [set(baseline.index), set(targeted.index), *(set(r.index) for r in random.values())]
        every = set().union(*sets)
        common = set.intersection(*sets)
        if len(common) < len(every):
            notes.append(f"{len(every) - len(common)} image(s) lack a caption in some condition or run and are left "
                         f"out ({len(common)} paired)")
        images = sorted(common)
        found.append(Group(layers=layers or "", feature_language=feature or "", caption_language=caption,
                           baseline=baseline.loc[images], targeted=targeted.loc[images],
                           random={r: d.loc[images] for r, d in random.items()}, images=images, notes=notes))
    return found


def bootstrap_ci(differences: np.ndarray, seed: int, resamples: int = N_RESAMPLES,
                 level: float = CI_LEVEL) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of `differences`: rng = numpy.random.default_rng(seed); the resamples'
    indices are rng.integers(0, n, size=(resamples, n)) (drawn in row blocks: the same numbers), each row's mean
    taken, and the (1 − level)/2 and (1 + level)/2 quantiles (numpy.percentile, linear) of those means returned.
    (NaN, NaN) for no differences."""
    d = np.asarray(differences, dtype=np.float64)
    n = len(d)
    if n == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples, dtype=np.float64)
    block = max(1, _BLOCK // n)
    for start in range(0, resamples, block):
        stop = min(start + block, resamples)
        means[start:stop] = d[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return (float(low), float(high))


def wilcoxon_p(differences: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p of `differences` (scipy.stats.wilcoxon, zero differences dropped);
    NaN when there is none or every one is 0."""
    d = np.asarray(differences, dtype=np.float64)
    if len(d) == 0 or not np.any(d != 0):
        return math.nan
    from scipy.stats import wilcoxon

    return float(wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)


def paired_differences(group: Group) -> np.ndarray:
    """d_i = g_targeted(i) − mean over random runs of g_random(i), per paired image; computed as
    (runs · g_targeted(i) − Σ_r g_r(i)) / runs so that equal differences are equal floats (ties, zeros)."""
    rand = group.random_matrix()
    if rand.shape[0] == 0:
        return np.full(len(group.images), np.nan)
    runs = rand.shape[0]
    return (runs * group.gendered(outputs.TARGETED) - rand.sum(axis=0)) / runs


def _pct(new: float, base: float) -> float:
    return 100.0 * (new - base) / base if base > 0 else math.nan


def _options(options: InterventionOptions | Mapping[str, Any]) -> InterventionOptions:
    return options if isinstance(options, InterventionOptions) else InterventionOptions.from_mapping(dict(options))


def summarize_group(group: Group, *, model: str, model_id: str, options: InterventionOptions | Mapping[str, Any],
                    seed: int) -> dict[str, Any]:
    """The summary row of one group (see the module's docstring)."""
    options = _options(options)
    notes = list(group.notes)
    base_g, targ_g, rand = group.gendered(outputs.BASELINE), group.gendered(outputs.TARGETED), group.random_matrix()
    runs = rand.shape[0]
    base, targeted = int(base_g.sum()), int(targ_g.sum())
    rand_counts = rand.sum(axis=1)
    change = _pct(targeted, base)
    rand_change = np.array([_pct(c, base) for c in rand_counts], dtype=np.float64)
    if base == 0 and len(group.images):
        notes.append("the baseline captions have no gendered word: change % (targeted and random), specificity and "
                     "ratio are undefined")
    random_mean = float(rand_change.mean()) if runs else math.nan
    random_std = float(rand_change.std(ddof=1)) if runs > 1 else math.nan
    if runs == 1:
        notes.append("one random run: random_std undefined")
    if runs and runs != options.runs:
        notes.append(f"{runs} random run(s) found, {options.runs} asked for")
    ratio = math.nan
    if math.isfinite(change) and math.isfinite(random_mean):
        if random_mean != 0:
            ratio = abs(change) / abs(random_mean)
        else:
            notes.append("the random runs' mean change is 0: ratio undefined")
    neutral_base = int(group.baseline["neutral"].sum())
    if neutral_base == 0 and len(group.images):
        notes.append("the baseline captions have no neutral word: neutral_change_pct undefined")
    d = paired_differences(group)
    ci_low, ci_high = bootstrap_ci(d, seed) if runs else (math.nan, math.nan)
    p = wilcoxon_p(d) if runs else math.nan
    if runs and len(d) and not np.any(d != 0):
        notes.append("every per-image difference is 0: wilcoxon_p undefined")
    empirical = math.nan
    if runs:
        empirical = (1 + int(np.sum(np.abs(rand_counts - base) >= abs(targeted - base)))) / (1 + runs)
    words_base, words_targ = int(group.baseline["words"].sum()), int(group.targeted["words"].sum())
    return {
        "model": model, "model_id": model_id, "layers": group.layers, "feature_language": group.feature_language,
        "caption_language": group.caption_language,
        "condition": outputs.language_relation(group.feature_language, group.caption_language),
        "hook": options.hook, "scale": float(options.scale), "positions": options.positions, "k": options.k,
        "runs": runs, "images": len(group.images), "base_count": base, "targeted_count": targeted,
        "change_pct": change, "random_mean": random_mean, "random_std": random_std,
        "specificity": abs(change) - abs(random_mean), "ratio": ratio,
        "rate_base": base / words_base if words_base else math.nan,
        "rate_targeted": targeted / words_targ if words_targ else math.nan,
        "male_base": int(group.baseline["male"].sum()), "female_base": int(group.baseline["female"].sum()),
        "male_targeted": int(group.targeted["male"].sum()), "female_targeted": int(group.targeted["female"].sum()),
        "neutral_change_pct": _pct(int(group.targeted["neutral"].sum()), neutral_base),
        "mean_difference": float(d.mean()) if len(d) and runs else math.nan,
        "ci_low": ci_low, "ci_high": ci_high, "wilcoxon_p": p, "empirical_p": empirical,
        "note": "; ".join(notes),
    }


def summarize(captions_df: pd.DataFrame, *, model: str, model_id: str,
              options: InterventionOptions | Mapping[str, Any], seed: int | None = None) -> pd.DataFrame:
    """summary.parquet: one row per (layers, feature_language, caption_language) of `captions_df` (captions.parquet
    rows with their counts). `options`: the run's InterventionOptions (hook, scale, positions, k, runs); `seed`:
    the bootstrap's (default options.seed), the same for every row so that each row is reproducible alone."""
    options = _options(options)
    seed = options.seed if seed is None else int(seed)
    rows = [summarize_group(g, model=model, model_id=model_id, options=options, seed=seed)
            for g in groups(captions_df)]
    return outputs.frame(rows, outputs.SUMMARY)


def run_changes(captions_df: pd.DataFrame) -> pd.DataFrame:
    """Per (layers, feature_language, caption_language, condition, run) over the paired images: gendered words
    and their change % against the baseline (the report's random distributions)."""
    rows = []
    for g in groups(captions_df):
        base = int(g.gendered(outputs.BASELINE).sum())
        cells = [(outputs.BASELINE, 0), (outputs.TARGETED, 0), *((outputs.RANDOM, r) for r in sorted(g.random))]
        for condition, run in cells:
            count = int(g.gendered(condition, run).sum())
            rows.append({"layers": g.layers, "feature_language": g.feature_language,
                         "caption_language": g.caption_language, "condition": condition, "run": run,
                         "gendered": count, "change_pct": _pct(count, base)})
    return pd.DataFrame(rows, columns=[*outputs.RUN, "gendered", "change_pct"])
