"""Loading a Hugging Face image-text-to-text model and its processor, offline-safe.

Production loads `google/gemma-3-4b-it` by hub id (from HF_HOME when HF_HUB_OFFLINE=1); tests load
the tiny fixture by local path. Both go through the same Auto classes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from . import schema
from .errors import LayerwiseError

FP16_OVERFLOW_MODEL_TYPES = ("gemma3",)  # activations overflow fp16: transformers#36822


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


def pick_device(name: str = "auto") -> torch.device:
    if name != "auto":
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(name: str, device: torch.device, model_type: str) -> torch.dtype:
    if name not in schema.DTYPES:
        raise LayerwiseError(f"--dtype {name!r} is not one of {', '.join(schema.DTYPES)}")
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name == "float16" and model_type.startswith(FP16_OVERFLOW_MODEL_TYPES):
        raise LayerwiseError(
            f"--dtype float16 is refused for {model_type}: its activations overflow float16 and turn "
            "into inf/NaN (transformers#36822). Use bfloat16 (GPU default) or float32."
        )
    return schema.DTYPES[name]


def load_config(model_id: str, revision: str | None = None):
    """AutoConfig for a hub id or local folder, with an actionable error when it is not there."""
    from transformers import AutoConfig

    local = Path(model_id).expanduser()
    if local.exists() and not (local / "config.json").is_file():
        raise LayerwiseError(f"--model {model_id}: the folder exists but has no config.json")
    try:
        return AutoConfig.from_pretrained(str(local) if local.exists() else model_id, revision=revision)
    except (OSError, ValueError) as exc:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        hf_home = os.environ.get("HF_HOME", str(Path.home() / ".cache" / "huggingface"))
        raise LayerwiseError(
            f"--model {model_id}: cannot load its configuration "
            f"(not a local folder; hub cache HF_HOME={hf_home}; HF_HUB_OFFLINE={'1' if offline else '0'}).\n"
            f"  Compute nodes are often offline: pre-fill the cache on a login node with "
            f"`HF_HOME={hf_home} hf download {model_id}` and pass --hf_home, or pass a local folder.\n"
            f"  Cause: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from None


def text_dims(config) -> tuple[int, int]:
    text = config.get_text_config()
    return int(text.num_hidden_layers), int(text.hidden_size)


def config_revision(config, revision: str | None) -> str:
    return getattr(config, "_commit_hash", None) or revision or "local"


def load_model(model_id: str, revision: str | None = None, dtype: str = "auto", device: str = "auto",
               attn_implementation: str | None = None) -> LoadedModel:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    config = load_config(model_id, revision)
    dev = pick_device(device)
    torch_dtype = resolve_dtype(dtype, dev, config.model_type)
    source = str(Path(model_id).expanduser()) if Path(model_id).expanduser().exists() else model_id
    kwargs = {"revision": revision, "dtype": torch_dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForImageTextToText.from_pretrained(source, **kwargs).to(dev).eval()
    processor = AutoProcessor.from_pretrained(source, revision=revision)
    # Right padding keeps every real token at the position it has at batch size 1 (Gemma 3
    # numbers positions 0..T-1 regardless of the attention mask), so batching changes no values.
    processor.tokenizer.padding_side = "right"
    num_layers, hidden = text_dims(config)
    return LoadedModel(model, processor, dev, torch_dtype, model_id, config_revision(config, revision),
                       num_layers, hidden, config.model_type)
