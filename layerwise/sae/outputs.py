"""Names and small files of an SAE output folder, and what cfg.json says about the SAE (`saelens_metadata`).

    <sae root>/layer_{L}/                (pooled languages)   or   layer_{L}_{language}/
        cfg.json, sae_weights.safetensors    the inference SAE: sae_lens.SAE.load_from_disk(folder); cfg.json's
                                             "metadata" holds the keys SAELens and the tools around it read
                                             (model_name, hook_name, hf_hook_name, context_size, dataset_path, ...)
        split.json                           the samples of each split (held-out ids for the analysis), and the ones
                                             left out for NaN/Inf values at extraction (excluded_nonfinite)
        metrics.json                         this SAE's metric records (the rows of metrics.parquet, plus steps,
                                             excluded_samples and notes)
        training.json                        options, input files, trainer figures (steps), samples left out, notes,
                                             versions
    <sae root>/metrics.parquet               every SAE's records (`write_metrics`)
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from layerwise.core.atomic import atomic_write_json, replace_durably
from layerwise.core.errors import LayerwiseError
from layerwise.core.outdir import LAYER_DIR, METADATA_JSON
from layerwise.core.provenance import SAMPLESHEET_PATH, sha256_file
from layerwise.sae.options import POOLED, SAEOptions

SPLIT_FILE, METRICS_FILE, TRAINING_FILE = "split.json", "metrics.json", "training.json"
METRICS_TABLE = "metrics.parquet"


def sae_folder_name(layer: int, language: str) -> str:
    return f"layer_{layer}" if language == POOLED else f"layer_{layer}_{language}"


def write_json(path: Path, obj: Any) -> None:
    atomic_write_json(path, obj)


def partial_folder(final: Path) -> Path:
    """A fresh scratch folder beside `final`; `publish` renames it to `final` when complete."""
    part = final.with_name(f".{final.name}.partial")
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    return part


def publish(part: Path, final: Path) -> None:
    """Swap the complete folder `part` in as `final` (a folder cannot be replaced in one rename: the old one
    is renamed aside first); its files were written through `core.atomic`, and the folder rename is synced."""
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    replace_durably(part, final)
    shutil.rmtree(old, ignore_errors=True)


def read_split(folder: str | os.PathLike) -> dict[str, Any]:
    """The split.json of an SAE folder: {"train": [ids], "validation": [ids], ...}."""
    return json.loads((Path(folder) / SPLIT_FILE).read_text(encoding="utf-8"))


def held_out_ids(folder: str | os.PathLike) -> list[str]:
    """The validation (held-out) sample ids of an SAE folder."""
    return list(read_split(folder)["validation"])


def collect_metrics(root: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of every SAE folder under `root` (their metrics.json), sorted by folder name."""
    records: list[dict[str, Any]] = []
    for path in sorted(Path(root).glob(f"layer_*/{METRICS_FILE}")):
        records += json.loads(path.read_text(encoding="utf-8"))
    return records


def read_options(folder: str | os.PathLike):
    """The SAEOptions an SAE folder was trained with (from training.json): to select the same rows again."""
    training = json.loads((Path(folder) / TRAINING_FILE).read_text(encoding="utf-8"))
    return SAEOptions.from_mapping(training["options"])


# ---------------------------------------------------------------- cfg.json: the SAELens metadata
# SAELens 6 (sae_lens.saes.sae.SAEConfig) keeps the architecture keys (d_in, d_sae, k, dtype, normalize_activations)
# at the top of cfg.json and everything about where the activations came from under "metadata" (SAEMetadata; the
# keys of sae_lens.loading.pretrained_sae_loaders.LLM_METADATA_KEYS). `ActivationsStore.from_sae` reads
# metadata.hook_name, context_size, prepend_bos (each required), hook_head_index and seqpos_slice;
# `SAE.get_name()` is f"sae_{model_name}_{hook_name}_{d_sae}"; the Neuronpedia helpers read neuronpedia_id.

# model_type -> the dotted name, in the loaded model's named_modules(), of `get_decoder().layers`: layer L's stored
# hidden state is the output of module f"{...}.{L}" (metadata.hf_hook_name). The same values as the field
# `decoder_layers` of layerwise.models.families (the one family table), held here because the SAE stage does not
# import layerwise.models (layerwise/stages.json: its code digest must cover what cfg.json is computed from);
# tests/unit/test_sae_cfg.py checks that the two agree, and both against every family's tiny model.
HF_DECODER_LAYERS: dict[str, str] = {
    "gemma3": "model.language_model.layers",
    "paligemma": "model.language_model.layers",
    "qwen2_vl": "model.language_model.layers",
    "qwen2_5_vl": "model.language_model.layers",
    "llava": "model.language_model.layers",
    "llava_next": "model.language_model.layers",
    "mllama": "model.language_model.layers",
    "idefics3": "model.text_model.layers",
    "smolvlm": "model.text_model.layers",
}


def hook_name(layer: int) -> str:
    """SAELens / TransformerLens name of what layerwise stores for layer L (raw output of decoder layer L)."""
    return f"blocks.{layer}.hook_resid_post"


def _is_repo_id(name: str) -> bool:
    """`name` is a valid Hugging Face repo id (`name` or `owner/name`)."""
    try:
        from huggingface_hub.utils import validate_repo_id

        validate_repo_id(name)
    except Exception:
        return False
    return True


def is_local_model(model_id: str) -> bool:
    """The model id a layer file records names a local folder, not a hub id: an existing folder, or a path by
    its form (absolute, `./`, `../`, `~`, more than one `/`; layerwise.models.loading.looks_like_path's rule)."""
    return (model_id.startswith(("/", "./", "../", "~")) or model_id.count("/") > 1 or model_id in (".", "..")
            or Path(model_id).expanduser().is_dir())


def _hub_cache_dir() -> str | None:
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    return None


def read_model_config(model_id: str) -> dict[str, Any] | None:
    """The model's config.json as a dict, without loading anything or any network: the local folder's, or the
    hub cache's copy of a hub id (HF_HOME / HF_HUB_CACHE); None when it cannot be read here."""
    if not model_id:
        return None
    if is_local_model(model_id):
        path: Path | None = Path(model_id).expanduser() / "config.json"
    elif _is_repo_id(model_id):
        try:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(model_id, "config.json", cache_dir=_hub_cache_dir())
        except Exception:
            found = None
        path = Path(found) if isinstance(found, str) else None
    else:
        path = None
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path is not None else None
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def clean_model_name(model_id: str, config: dict[str, Any] | None) -> str:
    """metadata.model_name: never a local path. The hub id when the layer files were extracted from a hub id;
    for a local folder, its config's `_name_or_path` when that is a hub id (not a path), else the hub id of a hub
    cache snapshot folder (`.../models--owner--name/snapshots/<commit>`), else the folder's name."""
    model_id = str(model_id or "").strip()
    if not model_id:
        return ""
    if not is_local_model(model_id):
        return model_id
    declared = str((config or {}).get("_name_or_path") or "").strip()
    if declared and _is_repo_id(declared) and not is_local_model(declared):
        return declared
    local = Path(os.path.abspath(os.path.expanduser(model_id)))
    for folder in (local, Path(os.path.realpath(local))):
        m = re.search(r"(?:^|/)models--([^/]+)/snapshots/[^/]+$", folder.as_posix())
        if m:
            return m.group(1).replace("--", "/")
    return local.name


@dataclass(frozen=True)
class ModelFacts:
    """What cfg.json says about the model the layer files came from (training.json keeps them too)."""

    model_id: str                # as the layer files record it (a local path stays in training.json only)
    model_name: str              # clean_model_name
    model_type: str | None       # config.json model_type, None when it cannot be read here
    model_type_from: str | None  # where model_type was read: "config" | "extraction_metadata" | None
    hf_layers: str | None        # HF_DECODER_LAYERS[model_type], None for an unknown or unread model_type

    def hf_hook_name(self, layer: int) -> str | None:
        return f"{self.hf_layers}.{int(layer)}" if self.hf_layers else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def layer_outdir(paths) -> Path | None:
    """The --outdir the layer files are published in (`<outdir>/layer_checkpoints/layer_*.pt`, links followed:
    TRAIN_SAE's staged files link there), or None when they are not all in one outdir's layer folder."""
    outdirs = set()
    for p in paths:
        real = Path(os.path.realpath(p))
        if real.parent.name != LAYER_DIR:
            return None
        outdirs.add(real.parent.parent)
    return outdirs.pop() if len(outdirs) == 1 else None


def model_facts(model_id: str, outdir: Path | None = None) -> ModelFacts:
    """ModelFacts of a layer file's model id. model_type comes from the model's config.json (local folder or hub
    cache, as extraction read it) or, failing that, from the outdir's extraction_metadata.json (model.model_type)."""
    config = read_model_config(model_id)
    model_type, source = (str(config["model_type"]), "config") if config and config.get("model_type") else (None, None)
    if model_type is None and outdir is not None:
        try:
            meta = json.loads((outdir / METADATA_JSON).read_text(encoding="utf-8"))
            recorded = (meta.get("model") or {}).get("model_type")
            if recorded and (meta.get("model") or {}).get("id") in (None, model_id):
                model_type, source = str(recorded), "extraction_metadata"
        except (OSError, ValueError, AttributeError):
            pass
    return ModelFacts(model_id=str(model_id or ""), model_name=clean_model_name(model_id, config),
                      model_type=model_type, model_type_from=source, hf_layers=HF_DECODER_LAYERS.get(model_type or ""))


def find_samplesheet(paths, given: str | os.PathLike | None = None) -> Path | None:
    """The samplesheet the layer files were extracted from: `given`, else the outdir's verified copy
    (`<outdir>/pipeline_info/samplesheet.valid.csv`, which PUBLISH_RESULTS publishes with the layer files), else
    None (layer files outside an outdir)."""
    if given is not None:
        path = Path(given)
        if not path.is_file():
            raise LayerwiseError(f"--samplesheet {given}: no such file")
        return Path(os.path.realpath(path))
    outdir = layer_outdir(paths)
    if outdir is None:
        return None
    sheet = outdir / SAMPLESHEET_PATH
    return sheet if sheet.is_file() else None


def saelens_metadata(*, layer: int, model: ModelFacts, context_size: int, prepend_bos: bool,
                     samplesheet: Path | None, options: SAEOptions, languages: list[str],
                     token_selection: str) -> dict[str, Any]:
    """cfg.json's "metadata": SAELens's keys, then layerwise's own (prefixed `layerwise_`).

    - context_size: the longest stored sequence (most rows of one sample) of the layer files: with
      --token_selection all the longest token sequence the model ran on; the SAE never saw a later position.
    - dataset_path: the samplesheet (absolute path; its sha256 in layerwise_dataset_sha256), null when unknown.
    - exclude_special_tokens: SAELens's key takes a bool or token ids; layerwise filters rows by token KIND, so it
      is true when the filter (keep_kinds/drop_kinds) left some kind out (the default drops bos), false when
      every position was used; the kinds themselves are layerwise_keep_kinds/drop_kinds/token_kinds.
    - hf_hook_name: the Hugging Face module whose output is the stored hidden state (null when the model's
      model_type cannot be read where the SAE is trained); neuronpedia_id: null (not uploaded to Neuronpedia).
    """
    return {
        "model_name": model.model_name, "hook_name": hook_name(layer), "hook_head_index": None,
        "hf_hook_name": model.hf_hook_name(layer), "prepend_bos": bool(prepend_bos),
        "context_size": int(context_size), "dataset_path": str(samplesheet) if samplesheet else None,
        "exclude_special_tokens": options.filters_kinds(), "neuronpedia_id": None,
        "layerwise_dataset_sha256": sha256_file(samplesheet) if samplesheet else None,
        "layerwise_model_type": model.model_type, "layerwise_layer": layer, "layerwise_language": options.language,
        "layerwise_languages": list(languages), "layerwise_token_kinds": list(options.kept_kind_names()),
        "layerwise_keep_kinds": options.keep_kinds, "layerwise_drop_kinds": options.drop_kinds,
        "layerwise_token_selection": token_selection,
    }
