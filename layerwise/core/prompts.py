"""Prompts per language, read from ``assets/prompts.json``.

The file maps a language key (lower case, ``[a-z][a-z_]*``; it also names the samplesheet
column ``caption_<language>`` and the output files ``layer_{L}_{language}.pt``) to an entry
``{"prompt": "...", "name": "Display name", "generation": "...", "families": {"<model_type>": "..."}}``:
``prompt`` is the instruction every model family gets with the caption (extraction), ``generation`` the one the
intervention stage asks it to write a caption with (default: ``prompt``), ``families`` the prompt of a family that
expects its own for both (PaliGemma's checkpoints are trained on task prefixes such as ``caption en``). Adding a language means adding one entry
(and a ``caption_<language>`` column to the samplesheet). A bare string value is accepted as the prompt.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from layerwise.core.errors import LayerwiseError

LANGUAGE_RE = re.compile(r"[a-z][a-z_]*")


def default_prompts_path() -> Path:
    """``assets/prompts.json`` of the repository this package lives in."""
    return Path(__file__).resolve().parents[2] / "assets" / "prompts.json"


def _read_entries(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LayerwiseError(f"prompts file {path} does not exist (--prompts)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise LayerwiseError(f"cannot read prompts file {path} (--prompts): {e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise LayerwiseError(f"prompts file {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or not data:
        raise LayerwiseError(
            f'prompts file {path} must be a non-empty JSON object such as {{"english": {{"prompt": "...", "name": "English"}}}}'
        )
    return data


def load_prompts(path: str | Path | None = None, model_type: str | None = None) -> dict[str, str]:
    """Read the prompts file (default: :func:`default_prompts_path`) into ``{language: prompt}``, with the
    prompt of `model_type`'s family where the entry names one."""
    path = Path(path) if path is not None else default_prompts_path()
    prompts: dict[str, str] = {}
    for language, entry in _read_entries(path).items():
        if not LANGUAGE_RE.fullmatch(language):
            raise LayerwiseError(
                f"prompts file {path}: language key {language!r} must be lower case letters and '_' (e.g. 'english'); "
                f"it names the samplesheet column caption_<language>"
            )
        prompt = entry.get("prompt") if isinstance(entry, dict) else entry
        if not isinstance(prompt, str) or not prompt.strip():
            raise LayerwiseError(f'prompts file {path}: language {language!r} needs a non-empty "prompt" string')
        families = entry.get("families", {}) if isinstance(entry, dict) else {}
        if not isinstance(families, dict) or not all(isinstance(v, str) and v.strip() for v in families.values()):
            raise LayerwiseError(f'prompts file {path}: language {language!r}: "families" must map model types to '
                                 "non-empty prompts")
        prompts[language] = families.get(model_type, prompt) if model_type else prompt
    return prompts


def generation_prompt(language: str, path: str | Path | None = None, model_type: str | None = None) -> str:
    """The prompt the model writes a caption for (the intervention stage): the entry's ``generation`` (default:
    its ``prompt``), or its family's own prompt where the entry names one."""
    path = Path(path) if path is not None else default_prompts_path()
    load_prompts(path, model_type)                     # the file's checks
    entry = _read_entries(path).get(language)
    if entry is None:
        raise LayerwiseError(f"no prompt for language {language!r} in {path}")
    if not isinstance(entry, dict):
        return entry
    families = entry.get("families", {})
    if model_type in families:
        return families[model_type]
    text = entry.get("generation", entry["prompt"])
    if not isinstance(text, str) or not text.strip():
        raise LayerwiseError(f'prompts file {path}: language {language!r}: "generation" must be a non-empty string')
    return text


def prompt_for(language: str, prompts: dict[str, str]) -> str:
    """The prompt for one language; the error lists the languages that have prompts."""
    try:
        return prompts[language]
    except KeyError:
        raise LayerwiseError(
            f"no prompt for language {language!r}; languages with a prompt: {', '.join(sorted(prompts)) or '(none)'} "
            f"(add an entry to assets/prompts.json or pass --prompts FILE)"
        ) from None
