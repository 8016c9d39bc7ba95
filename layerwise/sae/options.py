"""The options of SAE training: names, defaults, allowed values and checks, in one place.

`SAEOptions` is the single source of every option of `train_layer_sae` and of
`bin/layerwise-train-sae` (whose flags are generated from its fields), and `option_specs()`
describes the fields in JSON-schema terms so that `nextflow_schema.json` can mirror them (and a
test can compare the two). Invalid values raise `SAEOptionsError` naming the option.
This module imports neither SAELens nor anything heavy.
"""
from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from layerwise.core import schema
from layerwise.core.errors import LayerwiseError

ARCHITECTURES = ("topk", "jumprelu", "standard")
TRAIN_DTYPES = ("float32", "bfloat16")
NORMALIZATIONS = ("expected_average_only_in", "none")
B_DEC_INITS = ("mean", "zeros")
POOLED = "pooled"                      # `language` value: every language's file of the layer together
ALL_KINDS = "all"                      # `keep_kinds` value: every stored kind except padding
NO_KINDS = "none"                      # `drop_kinds` value: drop nothing (besides padding)
SELECTABLE_KINDS = tuple(k for k in schema.TOKEN_KINDS if k != "pad")
# Fewer optimizer steps than this get a warning (task log, training.json, the SAE report). With Adam each
# step moves a weight by about `lr` at most (3e-4 by default), so 100 steps move it by ~0.03, about the scale
# of its random initialisation (1/sqrt(d_in) ≈ 0.02-0.1): below that the SAE is mostly its initialisation.
# SAELens's dead-latent window (a tenth of the steps) and the lr decay (the last 20 %) also stop meaning
# anything at a handful of steps. Typical SAE runs take thousands of steps (docs/sae.md).
MIN_STEPS = 100
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class SAEOptionsError(LayerwiseError):
    """An invalid SAE option (the message names it)."""


def _opt(default: Any, help: str, *, choices: tuple | None = None, minimum: float | None = None,
         exclusive_minimum: float | None = None, maximum: float | None = None,
         exclusive_maximum: float | None = None, pattern: str | None = None, group: str = "sae") -> Any:
    meta = {"help": help, "choices": choices, "minimum": minimum, "exclusive_minimum": exclusive_minimum,
            "maximum": maximum, "exclusive_maximum": exclusive_maximum, "pattern": pattern, "group": group}
    return field(default=default, metadata={k: v for k, v in meta.items() if v is not None})


@dataclass(frozen=True)
class SAEOptions:
    """Every option of one SAE training run (per layer; one language or all of them pooled)."""

    # --- the SAE
    architecture: str = _opt("topk", "SAE architecture (SAELens training class): topk (k active latents per "
                             "token), jumprelu (L0 penalty, as Gemma Scope), standard (ReLU + L1 penalty)",
                             choices=ARCHITECTURES)
    expansion_factor: float = _opt(4.0, "SAE width as a multiple of the hidden size (d_sae = expansion_factor * d_in); "
                                   "ignored when d_sae > 0", exclusive_minimum=0)
    d_sae: int = _opt(0, "absolute SAE width (number of latents); 0: use expansion_factor", minimum=0)
    k: int = _opt(32, "topk: active latents per token (must be <= d_sae)", minimum=1)
    l1_coefficient: float = _opt(5.0, "standard: L1 sparsity coefficient", exclusive_minimum=0)
    l0_coefficient: float = _opt(1.0, "jumprelu: L0 sparsity coefficient", exclusive_minimum=0)
    jumprelu_init_threshold: float = _opt(0.01, "jumprelu: initial threshold", minimum=0)
    jumprelu_bandwidth: float = _opt(0.05, "jumprelu: straight-through estimator bandwidth", exclusive_minimum=0)
    sparsity_warm_up_fraction: float = _opt(0.0, "standard/jumprelu: fraction of the steps over which the sparsity "
                                            "coefficient rises linearly from 0", minimum=0, exclusive_maximum=1)
    normalize_activations: str = _opt("expected_average_only_in", "scale inputs to mean norm sqrt(d_in) while "
                                      "training (SAELens; folded into the saved weights, which take raw "
                                      "activations) or not", choices=NORMALIZATIONS)
    init_b_dec: str = _opt("mean", "initial decoder bias: the mean of the training rows (estimated from "
                           "norm_estimate_batches batches) or zeros", choices=B_DEC_INITS)
    # --- optimisation and budget
    lr: float = _opt(3e-4, "Adam learning rate", exclusive_minimum=0)
    lr_warm_up_fraction: float = _opt(0.0, "fraction of the steps with a linear learning-rate warm-up",
                                      minimum=0, exclusive_maximum=1)
    lr_decay_fraction: float = _opt(0.2, "fraction of the steps, at the end, with a linear decay of the learning "
                                    "rate to 0", minimum=0, exclusive_maximum=1)
    epochs: float = _opt(5.0, "training budget in passes over the training rows (ignored when training_tokens > 0)",
                         exclusive_minimum=0)
    training_tokens: int = _opt(0, "training budget in rows (tokens); 0: use epochs", minimum=0)
    batch_size: int = _opt(4096, "rows (tokens) per training batch", minimum=1)
    seed: int = _opt(0, "seed of the SAE initialisation and of the data shuffling", minimum=0)
    dtype: str = _opt("float32", "dtype of the training batches and of the SAE parameters", choices=TRAIN_DTYPES)
    device: str = _opt("auto", "torch device: auto (cuda if available, else cpu), cpu, cuda, cuda:N, mps",
                       pattern=_DEVICE_RE.pattern)
    # --- which rows
    language: str = _opt(POOLED, "'pooled': one SAE over every given language's file of the layer; or a language "
                         "name: one SAE over that language's file only", pattern=r"^[A-Za-z0-9_-]+$")
    keep_kinds: str = _opt(ALL_KINDS, "token kinds to train on, comma-separated from "
                           f"{', '.join(SELECTABLE_KINDS)}; 'all': every kind (padding is never used)",
                           pattern=r"^[a-z,]+$")
    drop_kinds: str = _opt("bos", "token kinds left out (after keep_kinds), comma-separated; 'none': none. "
                           "Default bos: Gemma's <bos> row has a huge norm, and Gemma Scope was trained without it",
                           pattern=r"^[a-z,]+$")
    validation_fraction: float = _opt(0.1, "fraction of the SAMPLES held out for validation (by sample_id, the "
                                      "same samples for every layer and language)",
                                      exclusive_minimum=0, exclusive_maximum=1)
    split_seed: int = _opt(0, "seed of the train/validation split (keep it fixed across layers)", minimum=0)
    # --- data provider
    chunk_tokens: int = _opt(16384, "stored rows read per contiguous read (a run of consecutive samples)", minimum=1)
    buffer_tokens: int = _opt(131072, "rows in the in-memory shuffle buffer (>= chunk_tokens)", minimum=1)
    prefetch_batches: int = _opt(4, "batches prepared ahead in a background thread; 0: no thread", minimum=0)
    norm_estimate_batches: int = _opt(50, "batches used to estimate the activation scale "
                                      "(normalize_activations=expected_average_only_in) and mean (init_b_dec=mean)",
                                      minimum=1)
    # --- per-latent dashboards (layerwise.sae.dashboard), written beside the SAE after training
    dashboard_latents: int = _opt(8, "per-latent dashboard (dashboard.html, dashboard.parquet in the SAE folder): "
                                  "this many latents most associated with gender, plus this many of the most "
                                  "frequent; 0: no dashboard", minimum=0)
    dashboard_examples: int = _opt(6, "per-latent dashboard: the (sample, language) pairs shown per latent, those "
                                   "with its largest activation", minimum=1)

    def __post_init__(self) -> None:
        for f in fields(self):
            _check_field(f, getattr(self, f.name))
        if self.buffer_tokens < self.chunk_tokens:
            raise SAEOptionsError(f"SAE option 'buffer_tokens' ({self.buffer_tokens}) must be >= "
                                  f"'chunk_tokens' ({self.chunk_tokens})")
        if self.lr_warm_up_fraction + self.lr_decay_fraction >= 1:
            raise SAEOptionsError("SAE options 'lr_warm_up_fraction' + 'lr_decay_fraction' must be < 1 "
                                  f"(got {self.lr_warm_up_fraction} + {self.lr_decay_fraction})")
        if not self.kept_kind_names():
            raise SAEOptionsError(f"SAE options 'keep_kinds' ({self.keep_kinds!r}) and 'drop_kinds' "
                                  f"({self.drop_kinds!r}) leave no token kind to train on")

    # --- derived values
    def kept_kind_names(self) -> tuple[str, ...]:
        keep = _kinds("keep_kinds", self.keep_kinds, ALL_KINDS)
        drop = _kinds("drop_kinds", self.drop_kinds, NO_KINDS)
        keep = SELECTABLE_KINDS if keep is None else keep
        return tuple(k for k in SELECTABLE_KINDS if k in keep and k not in (drop or ()))

    def filters_kinds(self) -> bool:
        """True when the token kinds (key `token_kinds`) are needed: some non-padding kind is left out."""
        return set(self.kept_kind_names()) != set(SELECTABLE_KINDS)

    def width(self, d_in: int) -> int:
        d_sae = self.d_sae if self.d_sae > 0 else int(round(self.expansion_factor * d_in))
        if d_sae < 1:
            raise SAEOptionsError(f"SAE option 'expansion_factor' ({self.expansion_factor}) x d_in ({d_in}) "
                                  "gives no latents")
        if self.architecture == "topk" and self.k > d_sae:
            raise SAEOptionsError(f"SAE option 'k' ({self.k}) must be <= the SAE width d_sae ({d_sae}; "
                                  f"d_sae={self.d_sae}, expansion_factor={self.expansion_factor}, d_in={d_in})")
        return d_sae

    def check_run(self, d_in: int, sample_ids: Sequence[str], token_selection: str | None = None,
                  rows_per_sample: Mapping[str, Sequence[int]] | None = None, per_language: bool = False) -> int:
        """The checks that need the model and the samples (PREFLIGHT runs them before any job): the width
        fits d_in and k, both splits get samples, the token-kind filters keep some kind that `token_selection`
        stores, and the projected training rows fill at least one batch. Returns d_sae.

        `rows_per_sample` ({language: rows of each sample, in `sample_ids` order}, an upper bound: see
        `projected_rows_per_sample`) and `per_language` (one SAE per language, not pooled) size the projection;
        without `rows_per_sample` the rows are not checked."""
        from layerwise.sae.split import TRAIN, VALIDATION, split_ids

        d_sae = self.width(d_in)
        ids = split_ids(sample_ids, self.validation_fraction, self.split_seed)
        for name in (TRAIN, VALIDATION):
            if not ids[name]:
                raise SAEOptionsError(
                    f"SAE options 'validation_fraction' ({self.validation_fraction}) and 'split_seed' "
                    f"({self.split_seed}) leave the {name} split of the {len(ids[TRAIN]) + len(ids[VALIDATION])} "
                    "samples empty (the split is by sample): change them or use more samples")
        if token_selection is not None:
            self.check_selection(token_selection)
        if rows_per_sample:
            rows, what = projected_train_rows(self, sample_ids, rows_per_sample, per_language, token_selection)
            self.check_rows(rows, what)
        return d_sae

    def check_selection(self, token_selection: str, where: str = "") -> None:
        """The kinds kept by 'keep_kinds'/'drop_kinds' meet the kinds `token_selection` stores
        (`schema.SELECTION_KINDS`); else no row could ever be trained on."""
        stored = schema.SELECTION_KINDS.get(token_selection)
        if stored is None:          # not a selection layerwise knows: the extraction's own check names it
            return
        kept = self.kept_kind_names()
        if not set(kept) & set(stored):
            raise SAEOptionsError(
                f"SAE options 'keep_kinds' ({self.keep_kinds!r}) and 'drop_kinds' ({self.drop_kinds!r}) keep token "
                f"kind(s) {', '.join(kept)}, but the token selection {token_selection!r} (--token_selection){where} "
                f"stores only {', '.join(stored)}: no row would be left to train on. Keep some of "
                f"{', '.join(stored)}, or extract with a --token_selection that stores "
                f"{', '.join(kept)} ({', '.join(sel for sel, kinds in schema.SELECTION_KINDS.items() if set(kept) & set(kinds))})")

    def check_rows(self, train_rows: int, what: str) -> None:
        """At least one full batch of training rows: else the epoch budget is one optimizer step of a
        batch that repeats the same rows."""
        if train_rows < self.batch_size:
            budget = self.training_tokens if self.training_tokens > 0 else self.epochs * train_rows
            raise SAEOptionsError(
                f"SAE option 'batch_size' ({self.batch_size}) is larger than the {what}: the whole training "
                f"would be one optimizer step on repeated rows. Lower 'batch_size' (e.g. to "
                f"{max(1, int(budget) // MIN_STEPS)} for {MIN_STEPS} steps), or use more samples or a token "
                "selection that stores more rows")

    def budget(self, train_rows: int) -> tuple[int, int]:
        """(optimizer steps, rows the trainer consumes): `epochs` passes over the training rows, or
        `training_tokens` rows, rounded down to whole batches (at least one)."""
        rows = self.training_tokens if self.training_tokens > 0 else int(round(self.epochs * train_rows))
        steps = max(1, rows // self.batch_size)
        return steps, steps * self.batch_size

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> SAEOptions:
        """Options from a mapping (e.g. Nextflow params or JSON); unknown names are an error."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise SAEOptionsError(f"unknown SAE option(s): {', '.join(unknown)} (known: {', '.join(sorted(names))})")
        return cls(**{k: _coerce(f, values[k]) for f in fields(cls) if (k := f.name) in values})


def projected_rows_per_sample(token_selection: str, languages: Sequence[str], n_samples: int,
                              caption_stats: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, list[int]] | None:
    """{language: rows each sample will store}, an upper bound of the rows an SAE can train on, from what
    PREFLIGHT knows before extraction: `mean`/`last` store one row per sample and language; `all` and `text`
    at most the sample's whole sequence, `caption` its positions from the caption on (`caption_stats`:
    `preflight.caption_check.check_captions`'s result, "positions"/"caption_positions"). Token-kind filters
    are not subtracted (an upper bound). None when the rows are unknown (no caption statistics)."""
    if token_selection in schema.PER_SAMPLE_SELECTIONS:
        return {lang: [1] * n_samples for lang in languages}
    key = {"all": "positions", "text": "positions", "caption": "caption_positions"}.get(token_selection)
    if key is None or not caption_stats:
        return None
    out = {}
    for lang in languages:
        counts = (caption_stats.get(lang) or {}).get(key)
        if counts is None or len(counts) != n_samples or any(c is None for c in counts):
            return None
        out[lang] = [int(c) for c in counts]
    return out


def projected_train_rows(options: SAEOptions, sample_ids: Sequence[str], rows_per_sample: Mapping[str, Sequence[int]],
                         per_language: bool, token_selection: str | None = None) -> tuple[int, str]:
    """(rows, what they are) of the smallest SAE's training split: every language pooled, or the smallest
    language with `per_language`."""
    from layerwise.sae.split import is_validation

    train = [not is_validation(str(s), options.validation_fraction, options.split_seed) for s in sample_ids]
    per_lang = {lang: sum(int(r) for r, t in zip(rows, train) if t) for lang, rows in rows_per_sample.items()}
    n_train = sum(train)
    selection = f"token selection {token_selection!r} (--token_selection)" if token_selection else "the planned positions"
    bound = "" if token_selection in schema.PER_SAMPLE_SELECTIONS else "at most "
    if per_language:
        lang = min(per_lang, key=per_lang.get)
        return per_lang[lang], (f"projected training rows of the {lang} SAE ({bound}{per_lang[lang]}: {n_train} "
                                f"training samples, {selection}, one SAE per language: --sae_per_language)")
    total = sum(per_lang.values())
    return total, (f"projected training rows ({bound}{total}: {n_train} training samples x {len(per_lang)} "
                   f"language(s) pooled, {selection})")


def _kinds(name: str, value: str, everything: str) -> tuple[str, ...] | None:
    value = value.strip()
    if value == everything:
        return None
    parts = tuple(p.strip() for p in value.split(",") if p.strip())
    bad = [p for p in parts if p not in SELECTABLE_KINDS]
    if bad or not parts:
        raise SAEOptionsError(f"SAE option {name!r}: {value!r} is not '{everything}' or a comma-separated list of "
                              f"token kinds from {', '.join(SELECTABLE_KINDS)}" + (f" (unknown: {', '.join(bad)})" if bad else ""))
    return parts


def _base_type(f: dataclasses.Field) -> type:
    return {"str": str, "int": int, "float": float, "bool": bool}[f.type if isinstance(f.type, str) else f.type.__name__]


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    """Numbers given as strings (command line, Nextflow) become numbers; anything else is left to the check."""
    typ = _base_type(f)
    if isinstance(value, str) and typ in (int, float):
        try:
            number = float(value)
            return int(number) if typ is int and number.is_integer() else (number if typ is float else value)
        except ValueError:
            return value
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _check_field(f: dataclasses.Field, value: Any) -> None:
    typ, meta, name = _base_type(f), f.metadata, f.name
    ok_type = (isinstance(value, typ) and not (typ is not bool and isinstance(value, bool))) or (
        typ is float and isinstance(value, int) and not isinstance(value, bool))
    if not ok_type:
        raise SAEOptionsError(f"SAE option {name!r} must be of type {typ.__name__}, got {value!r}")
    if typ is float and not math.isfinite(value):
        raise SAEOptionsError(f"SAE option {name!r} must be a finite number, got {value!r}")
    if "choices" in meta and value not in meta["choices"]:
        raise SAEOptionsError(f"SAE option {name!r} must be one of {', '.join(meta['choices'])}; got {value!r}")
    if "pattern" in meta and not re.match(meta["pattern"], value):
        raise SAEOptionsError(f"SAE option {name!r}: {value!r} is not valid ({meta['help']})")
    for key, test, word in (("minimum", lambda v, m: v >= m, ">="), ("exclusive_minimum", lambda v, m: v > m, ">"),
                            ("maximum", lambda v, m: v <= m, "<="), ("exclusive_maximum", lambda v, m: v < m, "<")):
        if key in meta and not test(value, meta[key]):
            raise SAEOptionsError(f"SAE option {name!r} must be {word} {meta[key]}, got {value!r}")
    if name in ("keep_kinds", "drop_kinds"):
        _kinds(name, value, ALL_KINDS if name == "keep_kinds" else NO_KINDS)


_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean"}


def option_specs() -> dict[str, dict[str, Any]]:
    """{name: {type, default, description[, enum, minimum, exclusiveMinimum, ...]}} in JSON-schema terms,
    in field order: what `nextflow_schema.json` should mirror (e.g. as params `sae_<name>`)."""
    out = {}
    for f in fields(SAEOptions):
        meta = f.metadata
        spec: dict[str, Any] = {"type": _JSON_TYPES[_base_type(f)], "default": f.default, "description": meta["help"]}
        for key, json_key in (("choices", "enum"), ("minimum", "minimum"), ("exclusive_minimum", "exclusiveMinimum"),
                              ("maximum", "maximum"), ("exclusive_maximum", "exclusiveMaximum"),
                              ("pattern", "pattern")):
            if key in meta:
                spec[json_key] = list(meta[key]) if key == "choices" else meta[key]
        out[f.name] = spec
    return out
