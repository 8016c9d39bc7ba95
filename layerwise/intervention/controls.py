"""Random control sets matched by firing rate, seeded per run.

A random control run ablates k latents drawn from the same firing-rate bins as the targeted set, so that it
removes as much "activity" as the targeted ablation does (drawn uniformly, most random latents of an SAE with
many dead or rarely firing latents would change nothing, and the controls would look tight).

- The bins are quantile bins of the live latents' firing rates (`bins` of them; equal quantile edges, from tied
  rates, are merged, so there may be fewer). A latent's bin is the number of inner edges <= its firing rate.
- Each targeted latent's bin contributes one draw, without replacement, from that bin's live, non-targeted
  latents. A bin that runs out takes the rest from its nearest bins (distance 1, 2, ... in bin index; both
  neighbours at one distance pooled), after every bin has drawn from its own; `drawn_controls` records the bin
  each latent came from and the bin it stands in for; `controls_table` records the sets (run, latent).
- Run r's generator is seeded from (seed, layer, feature_language, r) alone: run r's set depends neither on the
  number of runs nor on the other runs (raising runs 25 -> 50 keeps the first 25 sets; a chunk of runs
  [first_run, runs) draws the same sets as the whole).
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from layerwise.core.errors import LayerwiseError

CONTROL_COLUMNS = ("layer", "feature_language", "sae", "run", "latent", "firing_rate", "bin", "target_bin",
                   "borrowed")


def run_rng(seed: int, layer: int, feature_language: str, run: int, purpose: str = "random-control") -> np.random.Generator:
    """The generator of one run: a function of (purpose, seed, layer, feature language, run) only."""
    digest = hashlib.sha256(repr((purpose, int(seed), int(layer), str(feature_language), int(run))).encode()).digest()
    return np.random.default_rng(np.random.SeedSequence(list(np.frombuffer(digest[:16], dtype=np.uint32))))


def firing_rate_bins(rates: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """(inner edges, bin index per rate): quantile bins of `rates` (duplicate edges merged)."""
    rates = np.asarray(rates, dtype=np.float64)
    if bins < 1:
        raise LayerwiseError(f"firing-rate bins must be >= 1, got {bins}")
    if len(rates) == 0:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    edges = np.quantile(rates, np.linspace(0.0, 1.0, bins + 1))
    inner = np.unique(edges[1:-1])
    return inner, np.searchsorted(inner, rates, side="right").astype(np.int64)


class MatchedSampler:
    """Draws, per generator, one latent per target (its bin given) from `candidates` (latent ids with their
    bins), without replacement; bins that run out borrow from their nearest bins."""

    def __init__(self, candidates: np.ndarray, candidate_bins: np.ndarray, target_bins: Iterable[int], where: str = ""):
        order = np.argsort(candidates, kind="stable")
        self.candidates = np.asarray(candidates, dtype=np.int64)[order]
        self.cand_bins = np.asarray(candidate_bins, dtype=np.int64)[order]
        tb = np.asarray(list(target_bins), dtype=np.int64)
        self.need = {int(b): int(c) for b, c in zip(*np.unique(tb, return_counts=True))}
        self.k = len(tb)
        if len(self.candidates) < self.k:
            raise LayerwiseError(f"{where}: {len(self.candidates)} candidate latents (live, not targeted) for "
                                 f"{self.k} random draws per run; use a smaller k or an SAE with more live latents")
        self.by_bin = {int(b): self.candidates[self.cand_bins == b] for b in np.unique(self.cand_bins)}
        self.all_bins = sorted(set(self.by_bin) | set(self.need))

    def draw(self, rng: np.random.Generator) -> list[tuple[int, int, int]]:
        """[(latent, its bin, the target bin it was drawn for)], in draw order."""
        left = {b: v.copy() for b, v in self.by_bin.items()}
        out: list[tuple[int, int, int]] = []
        short: dict[int, int] = {}
        for b in sorted(self.need):
            c, avail = self.need[b], left.get(b, np.zeros(0, dtype=np.int64))
            take = min(c, len(avail))
            if take:
                pos = rng.choice(len(avail), size=take, replace=False)
                out += [(int(x), b, b) for x in avail[pos]]
                left[b] = np.delete(avail, pos)
            if c > take:
                short[b] = c - take
        lo, hi = (min(self.all_bins), max(self.all_bins)) if self.all_bins else (0, 0)
        for b in sorted(short):
            need, d = short[b], 1
            while need:
                near = [x for x in (b - d, b + d) if x in left and len(left[x])]
                if not near and (b - d < lo and b + d > hi):
                    raise AssertionError("fewer candidates than draws")   # checked in __init__
                if near:
                    pool = np.concatenate([left[x] for x in near])
                    pool_bins = np.concatenate([np.full(len(left[x]), x) for x in near])
                    take = min(need, len(pool))
                    pos = np.sort(rng.choice(len(pool), size=take, replace=False))
                    out += [(int(pool[p]), int(pool_bins[p]), b) for p in pos]
                    for x in near:
                        left[x] = np.setdiff1d(left[x], pool[pos])
                    need -= take
                d += 1
        return out


def _rows(latents_df: pd.DataFrame, layer: int, feature_language: str) -> pd.DataFrame:
    rows = latents_df[(latents_df["layer"] == layer) & (latents_df["feature_language"] == feature_language)]
    if rows.empty:
        raise LayerwiseError(f"no latents of layer {layer} and feature language {feature_language!r} in the table")
    if "sae" in rows and rows["sae"].nunique() != 1:
        raise LayerwiseError(f"layer {layer}, feature language {feature_language!r}: latents of several SAEs "
                             f"({', '.join(sorted(rows['sae'].unique()))}); give one SAE's table")
    if rows["latent"].duplicated().any():
        raise LayerwiseError(f"layer {layer}, feature language {feature_language!r}: duplicated latent indices")
    return rows.sort_values("latent")


def _sampler(rows: pd.DataFrame, k: int, bins: int, where: str, exclude_targeted: bool = True
             ) -> tuple[MatchedSampler, np.ndarray, dict[int, float]]:
    latent = rows["latent"].to_numpy(dtype=np.int64)
    rate = rows["firing_rate"].to_numpy(dtype=np.float64)
    live = ~rows["dead"].to_numpy(dtype=bool)
    targeted = rows["selected"].to_numpy(dtype=bool)
    if int(targeted.sum()) != k:
        raise LayerwiseError(f"{where}: the table has {int(targeted.sum())} selected latents, not k={k}")
    _, live_bins = firing_rate_bins(rate[live], bins)
    bin_of = np.full(len(latent), -1, dtype=np.int64)
    bin_of[live] = live_bins
    cand = live & ~targeted if exclude_targeted else live
    sampler = MatchedSampler(latent[cand], bin_of[cand], bin_of[targeted], where=where)
    return sampler, latent[targeted], dict(zip(latent.tolist(), rate.tolist()))


def _draws(latents_df: pd.DataFrame, k: int, runs: int, bins: int, seed: int, layer: int, feature_language: str,
           first_run: int) -> tuple[pd.DataFrame, dict[int, list[tuple[int, int, int]]]]:
    rows = _rows(latents_df, layer, feature_language)
    where = f"random controls of layer {layer}, feature language {feature_language}"
    if first_run < 0 or runs < first_run:
        raise LayerwiseError(f"{where}: runs [{first_run}, {runs}) is not a range of runs")
    sampler, _, _ = _sampler(rows, k, bins, where)
    return rows, {r: sampler.draw(run_rng(seed, layer, feature_language, r)) for r in range(first_run, runs)}


def matched_random_sets(latents_df: pd.DataFrame, k: int, runs: int, bins: int, seed: int, layer: int,
                        feature_language: str, first_run: int = 0) -> list[list[int]]:
    """The sorted latent lists of random runs first_run..runs-1 (k each, matched by firing-rate bin to the
    selected latents of `latents_df`'s (layer, feature_language) rows; never targeted, never dead)."""
    _, draws = _draws(latents_df, k, runs, bins, seed, layer, feature_language, first_run)
    return [sorted(x[0] for x in draws[r]) for r in sorted(draws)]


def controls_table(sets: Sequence[Sequence[int]], layer: int, feature_language: str,
                   first_run: int = 0) -> pd.DataFrame:
    """The drawn sets (as `matched_random_sets` returns them for runs first_run, first_run+1, ...) as rows:
    layer, feature_language, run, latent."""
    recs = [(int(layer), str(feature_language), first_run + i, int(lat)) for i, s in enumerate(sets) for lat in s]
    df = pd.DataFrame.from_records(recs, columns=["layer", "feature_language", "run", "latent"])
    return df.astype({"layer": "int64", "run": "int64", "latent": "int64"})


def drawn_controls(latents_df: pd.DataFrame, k: int, runs: int, bins: int, seed: int, layer: int,
                   feature_language: str, first_run: int = 0) -> pd.DataFrame:
    """The same draws as `matched_random_sets`, with how each latent was drawn (`CONTROL_COLUMNS`): one row per
    (run, latent), with the latent's firing rate, its bin and the bin of the targeted latent it stands in for
    (`borrowed` where they differ: that bin had run out)."""
    rows, draws = _draws(latents_df, k, runs, bins, seed, layer, feature_language, first_run)
    rate = dict(zip(rows["latent"].tolist(), rows["firing_rate"].tolist()))
    sae = str(rows["sae"].iloc[0]) if "sae" in rows else ""
    recs = [{"layer": int(layer), "feature_language": feature_language, "sae": sae, "run": r, "latent": lat,
             "firing_rate": rate[lat], "bin": b, "target_bin": tb, "borrowed": b != tb}
            for r in sorted(draws) for lat, b, tb in sorted(draws[r])]
    df = pd.DataFrame.from_records(recs, columns=list(CONTROL_COLUMNS))
    return df.astype({"layer": "int64", "run": "int64", "latent": "int64", "bin": "int64", "target_bin": "int64",
                      "borrowed": "bool", "firing_rate": "float64"})
