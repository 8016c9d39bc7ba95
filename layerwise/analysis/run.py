"""`analyze()`: the whole analysis stage over a run's layer files.

Layer by layer, each (layer, language) file is read once, memory-mapped, in chunks of samples
(`reader.iter_chunks`); every chunk feeds the view pooler and, when the layer has an SAE, the
latent pooler. With the pooled per-sample vectors of one layer (all languages) in memory, it runs
the probes, directions, cross-lingual comparisons and SAE associations, and stores the centered
Gram matrices that cross-layer CKA needs on disk. Then the vectors are dropped, so memory holds
one layer's pooled vectors at a time, whatever the number of layers.
"""
from __future__ import annotations

import logging
import sys
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from layerwise.analysis import crosslingual, directions, outputs
from layerwise.analysis.cka import MIN_SAMPLES as CKA_MIN_SAMPLES
from layerwise.analysis.cka import GramStore
from layerwise.analysis.labels import (
    DEFAULT_CLASSES,
    class_counts,
    encode_labels,
    fold_splits,
    leaking_samples,
    permuted_labels,
    usable,
)
from layerwise.analysis.pooling import pool_file
from layerwise.analysis.probes import MAX_ITER, probe, transfer_scores
from layerwise.analysis.reader import CHUNK_BYTES
from layerwise.analysis.sae import SaeLatentPooler, latent_associations, load_sae, sae_held_out_ids
from layerwise.analysis.views import ALL_VIEW_NAMES, CAPTION_READING_VIEWS, DEFAULT_VIEWS, plan_views
from layerwise.core.errors import LayerwiseError
from layerwise.layerfile.reader import LayerFile, nan_policy_words, open_layer_file

log = logging.getLogger("layerwise.analysis")


@dataclass
class Options:
    folds: int = 5
    permutations: int = 20
    seed: int = 0
    classes: tuple[str, ...] = DEFAULT_CLASSES
    views: tuple[str, ...] = DEFAULT_VIEWS
    C: float = 1.0                          # inverse L2 strength of the logistic regression
    n_jobs: int = 1                         # parallel permutation fits (joblib)
    chunk_bytes: int = CHUNK_BYTES          # float32 working set per chunk of samples
    cka_max_samples: int | None = 2000      # CKA on at most this many samples (seeded subset)
    groups: Mapping[str, str] | None = None  # sample_id -> group (e.g. image): grouped folds
    # sample_id -> caption columns holding the label's word (samplesheet label_leaks); None: unknown
    label_leaks: Mapping[str, Sequence[str]] | None = None
    sae_views: tuple[str, ...] | None = None  # views encoded by the SAEs (None: every pooled view)
    sae_top_k: int = 20
    sae_alpha: float = 0.05
    sae_heldout_fraction: float = 0.5
    sae_device: str = "cpu"
    sae_batch_rows: int = 1024
    report: bool = True
    scratch_dir: Path | None = None         # Gram matrices for CKA (default: a temporary folder)
    threads: int | None = 1                 # torch / BLAS threads inside the stage (None: leave as they are)

    def check(self) -> None:
        if self.folds < 2:
            raise LayerwiseError(f"folds must be >= 2, got {self.folds}")
        if self.permutations < 0:
            raise LayerwiseError(f"permutations must be >= 0, got {self.permutations}")
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise LayerwiseError(f"classes must be at least two distinct labels, got {list(self.classes)}")
        bad = [v for v in self.views if v not in ALL_VIEW_NAMES]
        if bad:
            raise LayerwiseError(f"views: unknown view(s) {bad}; choose from {list(ALL_VIEW_NAMES)}")
        if self.sae_views is not None and not set(self.sae_views) <= set(self.views):
            raise LayerwiseError(f"sae_views {list(self.sae_views)} must be among the pooled views {list(self.views)}")
        if not 0 < self.sae_heldout_fraction < 1:
            raise LayerwiseError("sae_heldout_fraction must be between 0 and 1")
        if self.cka_max_samples is not None and self.cka_max_samples < 3:
            raise LayerwiseError("cka_max_samples must be >= 3")
        if self.threads is not None and self.threads < 1:
            raise LayerwiseError("threads must be >= 1")


def make_options(options: Mapping[str, Any]) -> Options:
    known = {f.name for f in fields(Options)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise LayerwiseError(f"unknown analysis option(s) {unknown}; known: {sorted(known)}")
    opts = Options(**options)
    opts.classes = tuple(opts.classes)
    opts.views = tuple(opts.views)
    opts.sae_views = tuple(opts.sae_views) if opts.sae_views is not None else None
    opts.check()
    return opts


class Notes:
    """Everything skipped or left out, returned and logged (never silent)."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def add(self, message: str, layer=None, language=None, view=None, stage: str = "") -> None:
        self.items.append({"layer": layer, "language": language, "view": view, "stage": stage, "message": message})
        where = "/".join(str(x) for x in (layer, language, view) if x is not None)
        log.warning("%s%s", f"[{where}] " if where else "", message)


class Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def __call__(self, stage: str):
        timer = self

        class _Ctx:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                timer.seconds[stage] += time.perf_counter() - self.t0

        return _Ctx()


def _index_files(layer_files: Sequence[Path]) -> tuple[dict[int, dict[str, LayerFile]], list[str]]:
    by_layer: dict[int, dict[str, LayerFile]] = defaultdict(dict)
    languages: list[str] = []
    for path in layer_files:
        lf = open_layer_file(path)
        if lf.language in by_layer[lf.layer]:
            raise LayerwiseError(f"two files for layer {lf.layer}, language {lf.language!r}: "
                                 f"{by_layer[lf.layer][lf.language].path} and {path}")
        by_layer[lf.layer][lf.language] = lf
        if lf.language not in languages:
            languages.append(lf.language)
    # The sample order is the same in every file of a run; genders agree across languages.
    ref: dict[str, LayerFile] = {}
    gender_of: dict[str, tuple[str, str]] = {}
    for layer in sorted(by_layer):
        for lang, lf in by_layer[layer].items():
            first = ref.setdefault(lang, lf)
            if lf.sample_ids != first.sample_ids:
                raise LayerwiseError(f"{lf.name} and {first.name} hold different samples or a different sample "
                                     "order; the files of one run share their sample order")
            if lf is first:
                for sid, g in zip(lf.sample_ids, lf.genders):
                    seen = gender_of.setdefault(sid, (g, lf.name))
                    if seen[0] != g:
                        raise LayerwiseError(f"sample {sid!r} is {seen[0]!r} in {seen[1]} but {g!r} in {lf.name}")
    return dict(by_layer), languages


def _cka_subset(by_layer, languages, opts: Options) -> tuple[list[str], dict[str, np.ndarray]]:
    """Sample ids common to every language (first file's order, seeded subsample) and their rows per language."""
    first = {lang: next(lf for layer in sorted(by_layer) for l2, lf in by_layer[layer].items() if l2 == lang)
             for lang in languages}
    common = set.intersection(*(set(first[lang].sample_ids) for lang in languages))
    # samples with NaN/Inf values at extraction in any file are invalid there; CKA uses the samples valid in
    # every layer, so they are left out of the subset up front (the subset keeps its size where it can)
    common -= {sid for files in by_layer.values() for lf in files.values()
               for sid, bad in zip(lf.sample_ids, lf.excluded.tolist()) if bad}
    ids = [s for s in first[languages[0]].sample_ids if s in common]
    if opts.cka_max_samples is not None and len(ids) > opts.cka_max_samples:
        keep = np.sort(np.random.default_rng(opts.seed).choice(len(ids), opts.cka_max_samples, replace=False))
        ids = [ids[i] for i in keep]
    rows = {}
    for lang in languages:
        pos = {s: i for i, s in enumerate(first[lang].sample_ids)}
        rows[lang] = np.array([pos[s] for s in ids], dtype=np.int64)
    return ids, rows


def _nan_excluded(by_layer) -> list[dict]:
    """Per (layer, language) file with samples that had NaN/Inf values at extraction (nan_counts > 0):
    how many, which, and the policy that stored them. The reader gives these samples no rows."""
    out = []
    for layer in sorted(by_layer):
        for lang, lf in by_layer[layer].items():
            if lf.n_excluded:
                out.append({"layer": layer, "language": lang, "samples": lf.n_excluded, "of": lf.n_samples,
                            "nan_policy": lf.nan_policy,
                            "sample_ids": [s for s, b in zip(lf.sample_ids, lf.excluded.tolist()) if b]})
    return out


def _nan_note(excluded: list[dict]) -> str:
    """The one note that says which samples every computation left out for NaN/Inf values at extraction."""
    policies = "; ".join(nan_policy_words(p) for p in sorted({e["nan_policy"] for e in excluded}))
    files = ", ".join(f"layer {e['layer']} {e['language']} {e['samples']} of {e['of']}" for e in excluded[:20])
    more = f", and {len(excluded) - 20} more files" if len(excluded) > 20 else ""
    return (f"samples with NaN/Inf values at extraction (nan_counts > 0; {policies}) are left out of every probe, "
            f"direction, cross-lingual comparison, CKA and SAE latent of their layer and language: {files}{more} "
            "(analysis.json nan_excluded lists them)")


def _label_leaks(by_layer, languages, opts: Options) -> dict | None:
    """Per language, how many probed samples have their label's word in that language's caption.

    {language: {"leaking": n, "probed": m}}; None when unknown (no label_leaks given). The files of a
    language share their samples and genders (checked by _index_files), so its first file is enough.
    """
    if opts.label_leaks is None:
        return None
    out = {}
    for lang in languages:
        lf = next(by_layer[layer][lang] for layer in sorted(by_layer) if lang in by_layer[layer])
        out[lang] = {"leaking": leaking_samples(opts.label_leaks, lf.sample_ids, lf.genders, opts.classes, lang),
                     "probed": sum(g in opts.classes for g in lf.genders)}
    return out


def _groups_for(lf: LayerFile, idx: np.ndarray, opts: Options) -> np.ndarray | None:
    if opts.groups is None:
        return None
    return np.array([str(opts.groups.get(lf.sample_ids[i], lf.sample_ids[i])) for i in idx])


def analyze(layer_files: list[Path], out_dir: Path, sae_dirs: dict | None = None, **options) -> dict:
    """Run every analysis over the layer files and write the tables and report into out_dir.

    `sae_dirs` maps a layer, or a (layer, language), to an SAE folder (`sae_lens.SAE.load_from_disk`;
    its `split.json`, when present, restricts the associations to the samples it was not trained
    on) or to an object with `encode(x)` (and optionally `held_out_ids`). Options: see `Options`. Returns {"outputs": {name: path}, "notes": [...],
    "timings": {stage: s}, "probes"/"directions"/"cka"/"crosslingual"/"sae_features": DataFrames}.
    """
    opts = make_options(options)
    if not layer_files:
        raise LayerwiseError("no layer files given")
    with _threads(opts.threads):
        return _analyze(list(layer_files), Path(out_dir), sae_dirs, opts)


@contextmanager
def _threads(n: int | None):
    """Run with n torch intra-op and BLAS/OpenMP threads, restored afterwards.

    One thread by default: the stage's tensor operations are small or memory-bound, and on a shared
    node spare threads only spin (a 2-thread isin/isfinite on a loaded 2-core machine ran 100x
    slower than with one).
    """
    if n is None:
        yield
        return
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n):
            yield
    finally:
        torch.set_num_threads(before)


def _analyze(layer_files: list[Path], out_dir: Path, sae_dirs: dict | None, opts: Options) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    notes, timer = Notes(), Timer()
    t_start = time.perf_counter()
    with timer("open"):
        by_layer, languages = _index_files([Path(p) for p in layer_files])
        cka_ids, cka_rows = _cka_subset(by_layer, languages, opts)
        leaks = _label_leaks(by_layer, languages, opts)
        nan_excluded = _nan_excluded(by_layer)
    layers = sorted(by_layer)
    if nan_excluded:
        notes.add(_nan_note(nan_excluded), stage="nan")
    leaking = {lang for lang, n in (leaks or {}).items() if n["leaking"]}
    sae_dirs = dict(sae_dirs or {})
    for key in sae_dirs:
        layer, lang = key if isinstance(key, tuple) else (key, None)
        if layer not in by_layer or (lang is not None and lang not in by_layer[layer]):
            notes.add(f"an SAE was given for {key}, which has no layer file", layer=layer, language=lang, stage="sae")
    if len(languages) < 2:
        notes.add(f"only one language ({languages[0]}): no cross-lingual comparison or transfer", stage="crosslingual")
    binary = len(opts.classes) == 2
    if not binary:
        notes.add(f"{len(opts.classes)} classes: directions, transfer and SAE associations need exactly 2; skipped",
                  stage="directions")
    grams = GramStore(len(cka_ids), opts.scratch_dir)
    probe_rows: list[dict] = []
    direction_rows: list[dict] = []
    cross_rows: list[dict] = []
    sae_frames: list[pd.DataFrame] = []
    inputs = []
    try:
        for layer in layers:
            pooled: dict[str, dict] = {}
            base_dir_rows: dict[tuple[str, str], dict] = {}
            encoders: dict[int, Any] = {}
            for lang in [x for x in languages if x in by_layer[layer]]:
                lf = by_layer[layer][lang]
                inputs.append({"file": str(lf.path), "layer": layer, "language": lang,
                               "token_selection": lf.token_selection, "layout": lf.layout, "dtype": lf.dtype,
                               "samples": lf.n_samples, "token_kinds": lf.token_kinds is not None,
                               "nan_policy": lf.nan_policy, "nan_excluded": lf.n_excluded})
                plan, skipped = plan_views(lf.token_selection, lf.token_kinds is not None, opts.views)
                for msg in skipped:
                    notes.add(msg, layer, lang, stage="views")
                consumers = []
                sae_pooler = None
                spec = sae_dirs.get((layer, lang), sae_dirs.get(layer))
                encoder = None
                if spec is not None:
                    with timer("sae_load"):
                        if id(spec) not in encoders:
                            encoders[id(spec)] = spec if hasattr(spec, "encode") else load_sae(spec, opts.sae_device)
                        encoder = encoders[id(spec)]
                    d_in = getattr(getattr(encoder, "cfg", None), "d_in", None)
                    if d_in is not None and int(d_in) != lf.hidden_size:
                        raise LayerwiseError(f"the SAE for layer {layer} ({spec}) has d_in {d_in}, but {lf.name} has "
                                             f"hidden size {lf.hidden_size}")
                if encoder is not None:
                    sae_plan = {v: s for v, s in plan.items() if opts.sae_views is None or v in opts.sae_views}
                    if sae_plan:
                        sae_pooler = SaeLatentPooler(encoder, lf.n_samples, sae_plan, opts.sae_device,
                                                     opts.sae_batch_rows)
                        consumers.append(sae_pooler)
                with timer("read_pool" if sae_pooler is None else "read_pool_sae"):
                    views = pool_file(lf, plan, opts.chunk_bytes, consumers)
                for view, p in list(views.items()):
                    missing = lf.n_samples - p.n_valid - lf.n_excluded   # the excluded ones have their own note
                    if p.n_valid == 0:
                        why = ("every sample had NaN/Inf values at extraction" if lf.n_excluded == lf.n_samples
                               else "no sample has a position of it")
                        notes.add(f"view {view!r} skipped: {why}", layer, lang, view, "views")
                        del views[view]
                    elif missing:
                        notes.add(f"{missing} of {lf.n_samples} samples left out of view {view!r}: no position of "
                                  "the view, or NaN/Inf among its rows", layer, lang, view, "views")
                pooled[lang] = views
                for view, p in views.items():
                    _per_view(layer, lang, view, lf, p, opts, notes, timer, probe_rows, base_dir_rows)
                    with timer("cka_gram"):
                        rows = cka_rows[lang]
                        grams.put(lang, view, layer, p.vectors[rows], p.valid[rows])
                if sae_pooler is not None:
                    with timer("sae_stats"):
                        held = sae_held_out_ids(spec)
                        pool = "all"
                        if held is None:
                            notes.add("the SAE's training samples are unknown (no split.json): its associations "
                                      "use every sample, including any it was trained on", layer, lang, stage="sae")
                        else:
                            pool = "sae_held_out"
                            held_mask = np.isin(np.array(lf.sample_ids), np.array(list(held), dtype=str))
                        for view, (Z, valid, rate) in sae_pooler.result().items():
                            if held is not None:
                                valid = valid & held_mask
                            idx, y = encode_labels(lf.genders, opts.classes, valid)
                            if not binary:
                                continue
                            df, why = latent_associations(
                                Z[idx], y, tuple(opts.classes), heldout_fraction=opts.sae_heldout_fraction,
                                seed=opts.seed, top_k=opts.sae_top_k, alpha=opts.sae_alpha, token_firing_rate=rate)
                            if df is None:
                                notes.add(f"SAE associations skipped: {why}", layer, lang, view, "sae")
                                continue
                            df.insert(0, "view", view)
                            df.insert(0, "language", lang)
                            df.insert(0, "layer", layer)
                            df["classes"] = class_counts(y, opts.classes)
                            df["sample_pool"] = pool
                            sae_frames.append(df)
            _cross_language(layer, by_layer[layer], pooled, base_dir_rows, opts, notes, timer, cross_rows,
                            direction_rows, binary)
            del pooled, encoders
        with timer("cka_pairs"):
            cka_rows_out = []
            for lang, view in grams.keys():
                ls, mat, n_used = grams.matrix(lang, view)
                if n_used < CKA_MIN_SAMPLES:
                    notes.add(f"CKA over {n_used} sample(s) is not defined (it needs {CKA_MIN_SAMPLES}: two centred "
                              "samples make any two layers look identical); reported as NaN", language=lang,
                              view=view, stage="cka")
                for i, la in enumerate(ls):
                    for j, lb in enumerate(ls):
                        cka_rows_out.append({"layer_a": la, "layer_b": lb, "language": lang, "view": view,
                                             "cka": float(mat[i, j]), "adjacent": j == i + 1, "n_samples": n_used})
    finally:
        grams.close()

    # The label's word is in a caption this view reads: the probe can read the word (views.CAPTION_READING_VIEWS)
    for row in probe_rows:
        row["label_leak"] = row["language"] in leaking and row["view"] in CAPTION_READING_VIEWS
    tables = {
        outputs.PROBES: outputs.frame(probe_rows, outputs.PROBE_COLUMNS),
        outputs.DIRECTIONS: outputs.frame(direction_rows, outputs.DIRECTION_COLUMNS),
        outputs.CKA: outputs.frame(cka_rows_out, outputs.CKA_COLUMNS),
        outputs.CROSSLINGUAL: outputs.frame(cross_rows, outputs.CROSSLINGUAL_COLUMNS),
    }
    if sae_dirs:
        sae_df = pd.concat(sae_frames, ignore_index=True) if sae_frames else pd.DataFrame()
        tables[outputs.SAE_FEATURES] = outputs.frame(sae_df, outputs.SAE_COLUMNS)
    written = {}
    with timer("write"):
        for name, df in tables.items():
            written[name] = str(outputs.write_parquet(df, out_dir / name))
    if opts.report:
        with timer("report"):
            from layerwise.analysis.report import write_report

            written[outputs.REPORT] = str(write_report(tables, notes.items,
                                                       _summary_facts(layers, languages, opts, leaks, nan_excluded),
                                                       out_dir / outputs.REPORT))
    timings = dict(timer.seconds)
    timings["total"] = time.perf_counter() - t_start
    summary = {
        "options": {k: (v if k not in ("groups", "label_leaks") else (None if v is None else f"{len(v)} samples"))
                    for k, v in asdict(opts).items()},
        "layers": layers, "languages": languages, "cka_samples": len(cka_ids), "label_leaks": leaks,
        "nan_excluded": nan_excluded,
        "inputs": inputs, "sae_dirs": {str(k): str(v) for k, v in sae_dirs.items()},
        "notes": notes.items, "timings": timings, "outputs": written, "versions": _versions(),
    }
    written[outputs.SUMMARY] = str(outputs.write_json(out_dir / outputs.SUMMARY, summary))
    result = {"outputs": written, "notes": notes.items, "timings": timings}
    for name, df in tables.items():
        result[name.removesuffix(".parquet")] = df
    result.setdefault("sae_features", None)
    return result


def _per_view(layer, lang, view, lf: LayerFile, p, opts: Options, notes: Notes, timer: Timer,
              probe_rows: list, base_dir_rows: dict) -> None:
    """Probe and direction of one (layer, language, view)."""
    idx, y = encode_labels(lf.genders, opts.classes, p.valid)
    groups = _groups_for(lf, idx, opts)
    why = usable(y, len(opts.classes), opts.folds, groups)
    if why:
        notes.add(f"probe and direction skipped: {why}", layer, lang, view, "probes")
        return
    X = p.vectors[idx]
    try:
        splits = fold_splits(y, opts.folds, opts.seed, groups)
    except ValueError as exc:        # `usable` rules out the known causes
        notes.add(f"probe and direction skipped: no {opts.folds}-fold split: {exc}", layer, lang, view, "probes")
        return
    classes = class_counts(y, opts.classes)
    with timer("probes"):
        r = probe(X, y, splits, groups=groups, permutations=opts.permutations, seed=opts.seed, C=opts.C,
                  n_jobs=opts.n_jobs)
    if r.not_converged:
        notes.add(f"{r.not_converged} probe fit(s) did not converge in {MAX_ITER} iterations", layer, lang, view, "probes")
    probe_rows.append({"layer": layer, "language": lang, "view": view, "accuracy": r.accuracy,
                       "accuracy_std": r.accuracy_std, "control_accuracy": r.control_accuracy,
                       "control_std": r.control_std, "control_q95": r.control_q95, "p_value": r.p_value,
                       "chance": r.chance, "n_samples": len(y), "classes": classes, "n_folds": len(splits),
                       "n_permutations": opts.permutations, "not_converged": r.not_converged})
    if len(opts.classes) != 2:
        return
    with timer("directions"):
        d = directions.mean_difference(X, y)
        held, held_std = directions.heldout_effect_size(X, y, splits)
        base_dir_rows[(lang, view)] = {
            "layer": layer, "language": lang, "view": view, "n_samples": len(y), "classes": classes,
            "class_a": opts.classes[0], "class_b": opts.classes[1], "direction_norm": float(np.linalg.norm(d)),
            "effect_size": directions.projection_effect_size(X, y, d), "heldout_effect_size": held,
            "heldout_effect_size_std": held_std,
        }


def _aligned(lf_a: LayerFile, lf_b: LayerFile, valid_a, valid_b) -> tuple[np.ndarray, np.ndarray]:
    pos_b = {s: i for i, s in enumerate(lf_b.sample_ids)}
    ia, ib = [], []
    for i, s in enumerate(lf_a.sample_ids):
        j = pos_b.get(s)
        if j is not None and valid_a[i] and valid_b[j]:
            ia.append(i)
            ib.append(j)
    return np.array(ia, dtype=np.int64), np.array(ib, dtype=np.int64)


def _cross_language(layer, files: dict[str, LayerFile], pooled: dict, base_dir_rows: dict, opts: Options,
                    notes: Notes, timer: Timer, cross_rows: list, direction_rows: list, binary: bool) -> None:
    langs = list(pooled)
    partners: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for la, lb in combinations(langs, 2):
        for view in [v for v in pooled[la] if v in pooled[lb]]:
            pa, pb = pooled[la][view], pooled[lb][view]
            if pa.vectors.shape[1] != pb.vectors.shape[1]:
                notes.add(f"{la} and {lb} differ in hidden size: not compared", layer, None, view, "crosslingual")
                continue
            ia, ib = _aligned(files[la], files[lb], pa.valid, pb.valid)
            if len(ia) < 3:
                notes.add(f"fewer than 3 samples valid in both {la} and {lb}: not compared", layer, None, view,
                          "crosslingual")
                continue
            rng = np.random.default_rng([opts.seed, layer])
            with timer("crosslingual"):
                sim = crosslingual.similarity(pa.vectors[ia], pb.vectors[ib], rng)
            for prefix, what in (("", "cosines"), ("centered_", "centered cosines")):
                if np.isnan(sim[f"{prefix}matched_cosine"]):
                    notes.add(f"{what} of {la} and {lb} undefined (NaN): " + crosslingual.UNDEFINED[prefix],
                              layer, None, view, "crosslingual")
            cross_rows.append({"layer": layer, "view": view, "language_a": la, "language_b": lb, **sim})
            if not binary:
                continue
            # Probe transfer on the aligned samples with a probed label, same folds both ways.
            lab_idx, y = encode_labels([files[la].genders[i] for i in ia], opts.classes)
            groups = _groups_for(files[la], ia[lab_idx], opts)
            why = usable(y, 2, opts.folds, groups)
            stats_ab = stats_ba = None
            if why:
                notes.add(f"probe transfer {la}<->{lb} skipped: {why}", layer, None, view, "directions")
            else:
                Xa, Xb = pa.vectors[ia[lab_idx]], pb.vectors[ib[lab_idx]]
                try:
                    splits = fold_splits(y, opts.folds, opts.seed, groups)
                except ValueError as exc:
                    why = f"no {opts.folds}-fold split: {exc}"
                    notes.add(f"probe transfer {la}<->{lb} skipped: {why}", layer, None, view, "directions")
            if not why:
                with timer("transfer"):
                    stats_ab = _transfer_fields(len(y), transfer_scores(Xa, Xb, y, splits, opts.C, opts.seed))
                    stats_ba = _transfer_fields(len(y), transfer_scores(Xb, Xa, y, splits, opts.C, opts.seed))
            with timer("directions"):
                cos = (_direction_cosines(Xa, Xb, y, opts, groups) if not why
                       else _direction_cosines(None, None, None, opts))
            if not why and np.isnan(cos["direction_cosine"]):
                notes.add(f"direction cosine {la}<->{lb} undefined (NaN): a zero difference of the class means "
                          "in one language; no p-value", layer, None, view, "directions")
            for src, dst, st in ((la, lb, stats_ab), (lb, la, stats_ba)):
                partners[(src, view)].append({"other_language": dst, **cos, **(st or _transfer_fields(0, None))})
    for key, base in base_dir_rows.items():
        others = partners.get(key) or [{"other_language": None, **_direction_cosines(None, None, None, opts),
                                         **_transfer_fields(0, None)}]
        for other in others:
            direction_rows.append({**base, **other})


def _direction_cosines(Xa, Xb, y, opts: Options, groups: np.ndarray | None = None) -> dict:
    """Cosine of the two languages' directions on the aligned samples, and its shuffled-label control.

    The control permutes the labels of the aligned samples (the same permutation in both
    languages; by group with `groups`, `labels.permuted_labels`): content shared by a sample's two
    languages (its image) makes even random splits give similar directions, which is the baseline
    the observed cosine must beat. A cosine that is undefined (NaN: a zero direction) has no
    p-value (NaN); control permutations whose cosine is undefined are left out of the control.
    """
    nan = float("nan")
    if Xa is None:
        return {"direction_cosine": nan, "direction_cosine_control": nan, "direction_cosine_control_std": nan,
                "direction_cosine_p": nan}
    cos = directions.cosine(directions.mean_difference(Xa, y), directions.mean_difference(Xb, y))
    rng = np.random.default_rng([opts.seed, 2])
    control = np.array([directions.cosine(directions.mean_difference(Xa, yp), directions.mean_difference(Xb, yp))
                        for yp in (permuted_labels(y, rng, groups) for _ in range(opts.permutations))])
    control = control[np.isfinite(control)]
    if not len(control):
        return {"direction_cosine": cos, "direction_cosine_control": nan, "direction_cosine_control_std": nan,
                "direction_cosine_p": nan}
    p = (1 + int((control >= cos - 1e-12).sum())) / (1 + len(control)) if np.isfinite(cos) else nan
    return {"direction_cosine": cos, "direction_cosine_control": float(control.mean()),
            "direction_cosine_control_std": float(control.std()), "direction_cosine_p": p}


def _transfer_fields(n: int, scores: dict | None) -> dict:
    nan = float("nan")
    if scores is None:
        return {"n_aligned": n, "within_accuracy": nan, "transfer_accuracy": nan, "transfer_std": nan,
                "centered_transfer_accuracy": nan, "centered_transfer_std": nan}
    return {"n_aligned": n, "within_accuracy": float(scores["within"].mean()),
            "transfer_accuracy": float(scores["transfer"].mean()), "transfer_std": float(scores["transfer"].std()),
            "centered_transfer_accuracy": float(scores["centered_transfer"].mean()),
            "centered_transfer_std": float(scores["centered_transfer"].std())}


def _summary_facts(layers, languages, opts: Options, leaks: dict | None = None,
                   nan_excluded: list[dict] | None = None) -> dict:
    return {"layers": layers, "languages": languages, "folds": opts.folds, "permutations": opts.permutations,
            "seed": opts.seed, "classes": list(opts.classes), "views": list(opts.views), "label_leaks": leaks,
            "nan_excluded": nan_excluded or [], "sae_alpha": opts.sae_alpha}


def _versions() -> dict:
    import sklearn
    import torch

    return {"python": sys.version.split()[0], "torch": torch.__version__, "scikit-learn": sklearn.__version__,
            "pandas": pd.__version__, "numpy": np.__version__}
