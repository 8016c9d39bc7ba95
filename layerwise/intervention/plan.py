"""The intervention's plan: which layers, which SAE for each (layer, feature language), which evaluation images,
and the generation jobs, each written as one small JSON file so that a job's cache entry depends on its own
work only (raising the number of random runs keeps every earlier chunk's file, and so its cached captions).

Jobs: `baseline` per caption language (no hook); `targeted` per (feature language, caption language) of the
design; `random` per pair and chunk of runs (`InterventionOptions.run_chunks`).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from layerwise.core.atomic import atomic_write_json
from layerwise.core.errors import LayerwiseError
from layerwise.core.layers import format_layers, parse_layer_spec
from layerwise.intervention.options import InterventionOptions

BASELINE, TARGETED, RANDOM = "baseline", "targeted", "random"
POOLED = "pooled"


@dataclass
class Job:
    id: str
    condition: str                        # baseline | targeted | random
    layers: list[int]
    feature_language: str                 # "" for the baseline
    caption_language: str
    runs: list[dict] = field(default_factory=list)   # [{"run": r, "latents": {"<layer>": [latent, ...]}}]
    saes: dict[str, str] = field(default_factory=dict)   # "<layer>" -> SAE folder name

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_layers(spec: str, num_layers: int, available: list[int]) -> list[int]:
    """The layers to hook: `mid` is the middle layer; each must have published layer files and an SAE."""
    layers = [num_layers // 2] if spec.strip() == "mid" else parse_layer_spec(spec, num_layers)
    missing = [layer for layer in layers if layer not in available]
    if missing:
        raise InterventionOptions.error(
            f"intervention option 'layers' ({spec!r}) names layer(s) {format_layers(missing)}, which have no SAE "
            f"(SAEs exist for layers {format_layers(sorted(available)) or 'none'}: run with --sae over those layers)",
            "layers")
    return layers


def sae_for(folders: dict[tuple[int, str], str], layer: int, language: str) -> str:
    """The SAE folder of a (layer, feature language): the language's own SAE, else the layer's pooled one.
    Latent indices always go back through the SAE that ranked them."""
    name = folders.get((layer, language)) or folders.get((layer, POOLED))
    if name is None:
        raise LayerwiseError(f"no SAE for layer {layer} ({language} or pooled)")
    return name


def evaluation_samples(sheet, held_out: set[str], n_images: int, seed: int) -> list[str]:
    """Up to `n_images` held-out samples, one per distinct image (by its sha256 when recorded), seeded."""
    import numpy as np

    key = "image_sha256" if "image_sha256" in sheet.columns else "image"
    by_image: dict[str, str] = {}
    for sid, image in zip(sheet["sample_id"].astype(str), sheet[key].astype(str)):
        if sid in held_out and image not in by_image:
            by_image[image] = sid
    if not by_image:
        raise LayerwiseError("no held-out sample (the SAEs' validation split) to generate captions for")
    images = sorted(by_image)
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(len(images))[:n_images]
    return sorted(by_image[images[i]] for i in chosen)


def job_id(*parts: object) -> str:
    text = "_".join(str(p) for p in parts if p != "")
    return text.replace(",", "-")


def plan_jobs(options: InterventionOptions, layers: list[int], languages: list[str],
              folders: dict[tuple[int, str], str], targeted: dict[tuple[int, str], list[int]],
              random_sets: dict[tuple[int, str], list[list[int]]]) -> list[Job]:
    """Every generation job. `targeted[(layer, feature language)]`: the selected latents; `random_sets[...]`:
    one latent list per random run."""
    tag = format_layers(layers).replace(",", "-")
    jobs = [Job(job_id("baseline", "L" + tag, lang), BASELINE, layers, "", lang) for lang in languages]
    for fl, cl in options.language_pairs(languages):
        saes = {str(layer): sae_for(folders, layer, fl) for layer in layers}
        jobs.append(Job(job_id("targeted", "L" + tag, fl, cl), TARGETED, layers, fl, cl,
                        [{"run": 0, "latents": {str(layer): targeted[(layer, fl)] for layer in layers}}], saes))
        for start, stop in options.run_chunks():
            runs = [{"run": r, "latents": {str(layer): random_sets[(layer, fl)][r] for layer in layers}}
                    for r in range(start, stop)]
            jobs.append(Job(job_id("random", "L" + tag, fl, cl, f"r{start}-{stop - 1}"), RANDOM, layers, fl, cl,
                            runs, saes))
    return jobs


def write_jobs(jobs: list[Job], out_dir: Path) -> list[Path]:
    """One JSON file per job under out_dir/jobs/ (the generation tasks' inputs, hashed by content)."""
    paths = []
    for job in jobs:
        paths.append(out_dir / "jobs" / f"{job.id}.json")
        atomic_write_json(paths[-1], job.to_dict())
    return paths


def read_job(path: str | Path) -> Job:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return Job(**data)
    except (OSError, ValueError, TypeError) as exc:
        raise LayerwiseError(f"{path}: not an intervention job file ({exc})") from None


def fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]
