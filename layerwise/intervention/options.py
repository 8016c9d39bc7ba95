"""The options of the intervention stage: names, defaults, allowed values and checks, in one place.

`InterventionOptions` is the single source of every option; the pipeline exposes each as a param
`intervention_<option>` (nextflow_schema.json's `intervention_options` group is derived from `option_specs()`
by layerwise.params_schema, and a test checks the file is in sync). Invalid values raise
`InterventionOptionsError` naming the option. Torch-free.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any

from layerwise.core.errors import LayerwiseError

HOOKS = ("residual", "reconstruction")       # x - sum_j h_j W_dec[j]  |  x -> W_dec(h * mask) + b_dec
POSITIONS = ("all", "generated")             # where the hook edits the residual stream
DESIGNS = ("within", "cross", "both")        # feature language vs caption language: same, different, 2 x 2
RANKINGS = ("difference", "cohens_d", "per_sign")
POOL_KINDS = ("text", "caption", "prompt", "image", "all")
CONDITIONS = ("baseline", "targeted", "random")


class InterventionOptionsError(LayerwiseError):
    """An invalid intervention option (the message names it and its pipeline parameter)."""


def _opt(default: Any, help: str, **limits: Any) -> Any:
    return field(default=default, metadata={"help": help, **limits})


@dataclass(frozen=True)
class InterventionOptions:
    layers: str = _opt("mid", "decoder layers to hook, each with its own SAE: a layer spec ('12', '8,16', '8-10') or "
                       "'mid' (the middle layer); several layers are hooked at once on the one model",
                       pattern=r"^\s*(mid|[0-9][0-9,\s-]*)\s*$")
    k: int = _opt(100, "latents ablated per run (the top k of the ranking; the random runs draw as many)", minimum=1)
    runs: int = _opt(25, "random control runs (each k latents matched by firing rate, seeded per run)", minimum=1)
    images: int = _opt(500, "evaluation images (held-out samples of the SAEs, seeded, one caption per image)",
                       minimum=1)
    hook: str = _opt("residual", "residual: subtract the selected latents' contributions h_j W_dec[j] (the model "
                     "unchanged when none is selected); reconstruction: replace the residual by the SAE's decoding of "
                     "the masked codes", choices=HOOKS)
    scale: float = _opt(0.0, "factor on the selected latents: 0 ablates them, > 1 amplifies (steering)", minimum=0)
    positions: str = _opt("all", "positions the hook edits: every position, or the generated tokens only",
                          choices=POSITIONS)
    design: str = _opt("both", "within: latents selected in a language, captions generated in it; cross: in the "
                       "other language; both: the 2 x 2 design", choices=DESIGNS)
    ranking: str = _opt("difference", "rank latents by |mean male - mean female|, by |Cohen's d|, or take k/2 of "
                        "each sign of the difference", choices=RANKINGS)
    pool_kinds: str = _opt("text", "token kinds averaged per sample for the selection (text: prompt and caption)",
                           choices=POOL_KINDS)
    max_new_tokens: int = _opt(64, "tokens generated per caption (greedy)", minimum=1)
    batch_size: int = _opt(8, "captions generated per batch (with the KV cache)", minimum=1)
    chunk_runs: int = _opt(5, "random runs per GPU job (each chunk cached: raising runs reuses the first ones)",
                           minimum=1)
    firing_bins: int = _opt(10, "firing-rate bins the random latents are matched on", minimum=1)
    seed: int = _opt(42, "seed of the evaluation images and of the random runs", minimum=0)

    def __post_init__(self) -> None:
        for f in fields(self):
            meta, value = f.metadata, getattr(self, f.name)
            name = f"'{f.name}' ({value!r})"
            if "choices" in meta and value not in meta["choices"]:
                raise self.error(f"intervention option {name} must be one of {', '.join(meta['choices'])}", f.name)
            if "minimum" in meta and value < meta["minimum"]:
                raise self.error(f"intervention option {name} must be >= {meta['minimum']}", f.name)
        if self.ranking == "per_sign" and self.k % 2:
            raise self.error(f"intervention option 'k' ({self.k}) must be even with ranking 'per_sign' "
                             "(k/2 latents of each sign)", "k")

    @staticmethod
    def error(message: str, *names: str) -> InterventionOptionsError:
        params = ", ".join(f"--intervention_{n}" for n in names)
        return InterventionOptionsError(f"{message} (pipeline parameter{'s' if len(names) > 1 else ''}: {params})")

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> InterventionOptions:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise InterventionOptionsError(f"unknown intervention option(s): {', '.join(unknown)} "
                                           f"(known: {', '.join(sorted(names))})")
        typed = {}
        for f in fields(cls):
            if f.name in values:
                kind = type(f.default)
                try:
                    typed[f.name] = kind(values[f.name])
                except (TypeError, ValueError):
                    raise cls.error(f"intervention option '{f.name}' ({values[f.name]!r}) must be a "
                                    f"{kind.__name__}", f.name) from None
        return cls(**typed)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def language_pairs(self, languages: list[str]) -> list[tuple[str, str]]:
        """(feature language, caption language) pairs of the design."""
        pairs = []
        for fl in languages:
            for cl in languages:
                if (self.design == "within" and fl == cl) or (self.design == "cross" and fl != cl) or \
                        self.design == "both":
                    pairs.append((fl, cl))
        return pairs

    def run_chunks(self) -> list[tuple[int, int]]:
        """[start, stop) of the random runs of each GPU job: fixed boundaries, so raising `runs` keeps the
        earlier chunks (and their cache entries) as they are."""
        return [(a, min(a + self.chunk_runs, self.runs)) for a in range(0, self.runs, self.chunk_runs)]


def option_specs() -> dict[str, dict[str, Any]]:
    """Each option in JSON-schema terms (type, default, description, limits) for nextflow_schema.json."""
    out = {}
    for f in fields(InterventionOptions):
        kind = {bool: "boolean", int: "integer", float: "number", str: "string"}[type(f.default)]
        spec = {"type": kind, "default": f.default, "description": f.metadata["help"]}
        if "choices" in f.metadata:
            spec["enum"] = list(f.metadata["choices"])
        if "minimum" in f.metadata:
            spec["minimum"] = f.metadata["minimum"]
        if "pattern" in f.metadata:
            spec["pattern"] = f.metadata["pattern"]
        out[f.name] = spec
    return out
