"""Loading a Hugging Face image-text-to-text model and its processor, offline-safe.

Production loads `google/gemma-3-4b-it` by hub id (from HF_HOME when HF_HUB_OFFLINE=1); tests load
the tiny fixture by local path. Both go through the same Auto classes.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from layerwise.core import schema
from layerwise.core.errors import LayerwiseError
from layerwise.models.families import FAMILIES, GATED_PREFIXES, Family, family_of

MODEL_PARAM = "--model"
LOCAL_REVISION = "local"
_TRUE = {"1", "on", "yes", "true"}


@dataclass
class LoadedModel:
    model: torch.nn.Module
    processor: object
    device: torch.device
    dtype: torch.dtype
    model_id: str
    revision: str
    num_layers: int
    hidden_size: int
    model_type: str

    @property
    def family(self) -> Family:
        return family_of(self.model_type)


def pick_device(name: str = "auto") -> torch.device:
    """`auto`: the GPU when there is one; `cuda`: a GPU or a clear error (no silent CPU fallback)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LayerwiseError(
            f"--device {name}: torch {torch.__version__} sees no CUDA GPU "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}). Check that the job got a GPU "
            f"(--gres) and that the NVIDIA driver supports CUDA {torch.version.cuda} (`nvidia-smi`); otherwise "
            "install a torch build for the driver's CUDA version.")
    return device


def resolve_dtype(name: str, device: torch.device, model_type: str) -> torch.dtype:
    if name not in schema.DTYPES:
        raise LayerwiseError(f"--dtype {name!r} is not one of {', '.join(schema.DTYPES)}")
    if name == "auto":
        # bf16 where the GPU has it (A100, H100); float32 on V100s and CPUs. Never fp16 by default.
        cuda = device.type == "cuda" and torch.cuda.is_available()
        return torch.bfloat16 if cuda and torch.cuda.is_bf16_supported(including_emulation=False) else torch.float32
    hazard = FAMILIES[model_type].fp16_hazard if model_type in FAMILIES else ""
    if name == "float16" and hazard:
        raise LayerwiseError(f"--dtype float16 is refused for {model_type}: {hazard}. "
                             "Use bfloat16 (GPU default) or float32.")
    return getattr(torch, name)


def hub_offline() -> bool:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE as set *now* (read per call, like hub_cache_dir)."""
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_cache_dir() -> str | None:
    """The hub cache named by the environment *now* (HF_HUB_CACHE, else HF_HOME/hub); None = library default.

    huggingface_hub reads these variables once at import; reading them per call lets a caller
    (or a test) set HF_HOME / HF_HUB_OFFLINE after the import and still be honoured.
    """
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    return None


def looks_like_path(model: str) -> bool:
    """The one rule for "--model names a local folder, not a hub id" (a hub id is `owner/name`):
    absolute, relative to `.`/`..` or `~`, or with more than one `/`. LayerwiseUtils.looksLikePath is
    the same rule on the Nextflow side (tests/unit/test_local_path.py checks that they agree)."""
    return model.startswith(("/", "./", "../", "~")) or model.count("/") > 1 or model in (".", "..")


def _not_found(model: str, revision: str | None, detail: str) -> LayerwiseError:
    cache = hub_cache_dir()
    if cache is None:
        from huggingface_hub import constants

        cache = f"{constants.HF_HUB_CACHE} (default; HF_HOME is not set)"
    local = Path(model).expanduser()
    tried = [f"local folder {local.absolute()}: {'has no config.json' if local.is_dir() else 'does not exist'}"]
    if not looks_like_path(model):
        mode = "offline (HF_HUB_OFFLINE=1), cache only" if hub_offline() else "online, then cache"
        rev = f" at revision {revision}" if revision else ""
        tried.append(f"Hugging Face hub id '{model}'{rev} in cache {cache}, {mode}: not found")
    hint_id = model if not looks_like_path(model) else "<org>/<model>"
    gated = (f"'{model}' is a gated model: accept its licence on its Hugging Face page and set HF_TOKEN before the "
             "download. ") if model.startswith(GATED_PREFIXES) else ""
    first = detail.strip().splitlines()[0] if detail.strip() else ""
    return LayerwiseError(
        f"{MODEL_PARAM} '{model}': cannot read the model config. Tried: " + "; ".join(tried) + ". " + gated +
        f"Compute nodes usually have no internet: pre-fill the Hugging Face cache on a login node with "
        f"`HF_HOME=/shared/hf hf download {hint_id}` (older huggingface_hub: `huggingface-cli download {hint_id}`) "
        f"and pass --hf_home /shared/hf "
        f"(gated models such as Gemma also need an accepted licence and HF_TOKEN for the download), "
        f"or pass a local model folder: --model /path/to/folder."
        + (f" (transformers said: {first})" if first else "")
    )


def config_json_problem(path: str | Path) -> str | None:
    """None if ``path`` is a readable JSON object, else what is wrong with it (names the file)."""
    import json

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return f"{path} does not exist" + (" (a broken link into the Hugging Face cache: an unfinished download?)"
                                           if path.is_symlink() else "")
    except UnicodeDecodeError as e:
        return f"{path} is not UTF-8 text ({e})"
    except OSError as e:
        return f"{path} cannot be read ({e.strerror or e})"
    if not text.strip():
        return f"{path} is empty (0 bytes of JSON)"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        return f"{path} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno} (truncated or hand-edited?)"
    if not isinstance(data, dict):
        return f"{path} is JSON but not an object ({type(data).__name__})"
    return None


def _corrupt_config(model: str, problem: str) -> LayerwiseError:
    return LayerwiseError(f"{MODEL_PARAM} '{model}': cannot read the model config: {problem}. "
                          "Restore the file (re-download the model, or copy it again).")


def resolve_model_dir(model: str, revision: str | None = None) -> tuple[Path, str]:
    """(folder with the model's files, resolved revision) without loading anything: a local folder
    (revision ``local``) or the hub cache snapshot of a hub id (its commit), never downloading."""
    model = str(model)
    revision = revision or None
    local = Path(model).expanduser()
    if local.is_dir():
        return local.absolute(), LOCAL_REVISION
    if looks_like_path(model):
        raise _not_found(model, revision, "")
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(model, revision=revision, cache_dir=hub_cache_dir(), local_files_only=True))
    except Exception as e:  # LocalEntryNotFoundError, RevisionNotFoundError, ...
        raise _not_found(model, revision, f"{type(e).__name__}: {e}" if not hub_offline() else str(e)) from None
    return folder, folder.name


def resolve_source(model: str, revision: str | None) -> tuple[str, dict]:
    """(path or hub id, from_pretrained kwargs) honouring HF_HOME / HF_HUB_OFFLINE as set now."""
    model = str(model)
    revision = revision or None
    local = Path(model).expanduser()
    kwargs: dict = {}
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise _not_found(model, revision, "")
        source = str(local)
    else:
        if looks_like_path(model):
            raise _not_found(model, revision, "")
        source = model
        kwargs = {"revision": revision, "cache_dir": hub_cache_dir(), "local_files_only": hub_offline()}
    return source, kwargs


def load_config(model: str, revision: str | None = None):
    """AutoConfig of a local folder or hub id, with an actionable error when it is not there."""
    from transformers import AutoConfig

    source, kwargs = resolve_source(model, revision or None)
    if not kwargs and (problem := config_json_problem(Path(source) / "config.json")):
        raise _corrupt_config(model, problem)
    try:
        config = AutoConfig.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as e:
        text = str(e)
        cached = _cached_file(model, revision, "config.json") if kwargs else None
        if cached and (problem := config_json_problem(cached)):
            raise _corrupt_config(model, problem) from None
        if isinstance(e, ValueError) and ("model_type" in text or "does not recognize" in text):
            import transformers

            raise LayerwiseError(
                f"{MODEL_PARAM} '{model}': transformers {transformers.__version__} cannot read this model's "
                f"config ({text.splitlines()[0]})"
            ) from None
        raise _not_found(model, revision, text) from None
    return config


def resolved_revision(model: str, revision: str | None) -> str:
    if Path(str(model)).expanduser().is_dir():
        return LOCAL_REVISION
    return _cached_commit(str(model), revision or None) or revision or "main"


def read_model_info(model: str, revision: str | None = None) -> dict:
    """``{"id", "revision", "num_layers", "hidden_size", "model_type"}`` from the model's config only."""
    config = load_config(model, revision)
    text_config = config.get_text_config()
    try:
        num_layers = int(text_config.num_hidden_layers)
        hidden_size = int(text_config.hidden_size)
    except (AttributeError, TypeError) as e:
        raise LayerwiseError(f"{MODEL_PARAM} '{model}': its config has no num_hidden_layers/hidden_size ({e})") from None
    return {
        "id": str(model),
        "revision": resolved_revision(model, revision),
        "num_layers": num_layers,
        "hidden_size": hidden_size,
        "model_type": str(getattr(config, "model_type", "") or ""),
    }


def _cached_file(repo_id: str, revision: str | None, filename: str) -> str | None:
    """Path of a file in the hub cache (works offline), if it is there."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, filename, cache_dir=hub_cache_dir(), revision=revision or None)
    except Exception:
        return None
    return found if isinstance(found, str) else None


def _cached_commit(repo_id: str, revision: str | None) -> str | None:
    """Commit hash of the cached config.json snapshot (works offline), if it can be told."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "config.json", cache_dir=hub_cache_dir(), revision=revision)
    except Exception:
        return None
    if isinstance(found, str):
        m = re.search(r"snapshots/([0-9a-f]{40})/", Path(found).as_posix())
        return m.group(1) if m else None
    return None


def text_dims(config) -> tuple[int, int]:
    text = config.get_text_config()
    return int(text.num_hidden_layers), int(text.hidden_size)


def load_model(model_id: str, revision: str | None = None, dtype: str = "auto", device: str = "auto",
               attn_implementation: str | None = None) -> LoadedModel:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    config = load_config(model_id, revision)
    dev = pick_device(device)
    torch_dtype = resolve_dtype(dtype, dev, config.model_type)
    source, hub_kwargs = resolve_source(model_id, revision or None)
    extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = AutoModelForImageTextToText.from_pretrained(source, dtype=torch_dtype, **hub_kwargs, **extra).to(dev).eval()
    processor = AutoProcessor.from_pretrained(source, **hub_kwargs)
    # Right padding keeps every real token at the position it has at batch size 1 (the decoders number
    # positions 0..T-1 regardless of the attention mask), so batching changes no values.
    processor.tokenizer.padding_side = "right"
    num_layers, hidden = text_dims(config)
    return LoadedModel(model, processor, dev, torch_dtype, model_id, resolved_revision(model_id, revision),
                       num_layers, hidden, config.model_type)
