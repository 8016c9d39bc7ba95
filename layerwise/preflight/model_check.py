"""PREFLIGHT's model check: everything a GPU job would trip over, found by reading headers only.

:func:`check_model` resolves ``--model`` exactly as loading does (a local folder, or the hub-cache
snapshot of a hub id: ``HF_HOME`` / ``HF_HUB_OFFLINE`` honoured, nothing downloaded) and checks,
without loading any weights:

* ``config.json`` is valid JSON, it has a ``vision_config`` (a text-only model is refused as such), its
  ``model_type`` is a family of ``layerwise.models.families`` and transformers can read it;
* every weight file exists and is complete: ``model.safetensors.index.json`` (when sharded) names
  the shards, each shard's 8-byte header length and JSON header are read, the tensors' byte ranges
  must tile the file exactly (the size safetensors itself insists on), each index entry must be in
  its shard, and the weights must hold the family's vision encoder and as many decoder layers as the
  config says;
* the tokenizer and processor files are there (and every JSON file parses), a chat template where the
  family builds its text with one, and the processor's image token count agrees with the model's.

It returns the facts PREFLIGHT needs, including a cheap ``fingerprint``: sha256 over the weight
files' names, sizes and mtimes (in the hub cache: their content-addressed blob names) and the
sha256 of every small file, so a local model whose weights change gets a new fingerprint without
rehashing gigabytes.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from pathlib import Path

from layerwise.core.errors import LayerwiseError
from layerwise.models.families import CHAT, FAMILIES, Family, supported_text
from layerwise.models.loading import MODEL_PARAM, config_json_problem, resolve_model_dir

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"
BIN_INDEX = "pytorch_model.bin.index.json"
BIN_SINGLE = "pytorch_model.bin"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack", ".onnx")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")          # one of them
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")  # one of them
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
MAX_HEADER_BYTES = 100 * 1024 * 1024      # safetensors' own limit on the JSON header
HASHED_MAX_BYTES = 64 * 1024 * 1024       # non-weight files up to this size are content-hashed
IGNORED_FILES = re.compile(r"(?i)^(readme|license|licence|notice|use_policy)(\.|$)|\.(md|png|jpe?g|gif)$")
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "I16": 2, "U16": 2,
               "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
# A decoder layer's weights: `...layers.<N>.` outside the vision encoder (language_model.model.layers, model.layers,
# model.language_model.layers, model.text_model.layers, ... depending on the family and the checkpoint's age)
_DECODER_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


class _Problems:
    def __init__(self, model: str, folder: Path):
        self.model, self.folder, self.items = model, folder, []

    def add(self, text: str) -> None:
        self.items.append(text)

    def raise_if_any(self) -> None:
        if self.items:
            head = f"{MODEL_PARAM} '{self.model}' ({self.folder}) cannot be used:"
            if len(self.items) == 1:
                raise LayerwiseError(f"{head} {self.items[0]}")
            raise LayerwiseError("\n".join([head] + [f"  - {t}" for t in self.items]))


def _check_config(raw: dict, folder: Path, problems: _Problems) -> Family | None:
    model_type = str(raw.get("model_type") or "")
    where = folder / "config.json"
    what = f"model_type {model_type!r}" if model_type else "no model_type"
    if not isinstance(raw.get("vision_config"), dict):
        problems.add(f"{where} ({what}) has no vision_config: a text-only model, which has no image input to record "
                     f"(transformers would invent a vision encoder with random weights). Supported image-text "
                     f"families: {supported_text()}")
        return None
    family = FAMILIES.get(model_type)
    if family is None:
        problems.add(f"{where} has {what}, an image-text family layerwise does not run. Supported: {supported_text()}")
        return None
    archs = raw.get("architectures") or []
    if archs and family.architecture not in archs:
        problems.add(f"{where} names the architecture {', '.join(map(str, archs))}, not {family.architecture} "
                     f"(the {family.name} image-text model layerwise loads). Supported: {supported_text()}")
    return family


def read_safetensors_header(path: Path) -> dict:
    """The JSON header of a safetensors file, after checking the file is exactly as long as it describes.

    Raises ValueError (without the path) saying what is wrong.
    """
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ValueError(f"truncated: {size} bytes, shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise ValueError(f"header length {n} does not fit the file's {size} bytes (truncated, or not a safetensors file)")
        raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"its JSON header is corrupt ({e})") from None
    if not isinstance(header, dict):
        raise ValueError("its header is not a JSON object")
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = (int(v) for v in entry["data_offsets"])
            shape = [int(d) for d in entry["shape"]]
            dtype = str(entry["dtype"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"tensor {name!r} has a malformed header entry {entry!r}") from None
        count = 1
        for d in shape:
            count *= d
        if dtype in DTYPE_BYTES and end - begin != count * DTYPE_BYTES[dtype]:
            raise ValueError(f"tensor {name!r} ({dtype} {shape}) needs {count * DTYPE_BYTES[dtype]} bytes but its "
                             f"offsets {begin}..{end} give {end - begin}")
        spans.append((begin, end, name))
    spans.sort()
    position = 0
    for begin, end, name in spans:
        if begin != position or end < begin:
            raise ValueError(f"tensor {name!r} starts at byte {begin} of the data, expected {position} (corrupt header)")
        position = end
    need = 8 + n + position
    if size < need:
        last = spans[-1][2] if spans else "?"
        raise ValueError(f"truncated: {size} bytes, but its header describes {need} (the data of tensor {last!r} "
                         f"ends at byte {need}); the download or copy did not finish")
    if size > need:
        raise ValueError(f"{size - need} bytes longer than its header describes ({need} bytes): corrupt")
    return header


def _missing(folder: Path, name: str) -> str:
    path = folder / name
    if path.is_symlink():
        return f"{name} is a broken link into the Hugging Face cache (the download did not finish; run `hf download` again)"
    return f"{name} is missing"


def _check_weights(folder: Path, num_layers: int | None, problems: _Problems, family: Family) -> list[Path]:
    """The weight files (checked); problems are added, not raised."""
    if (folder / SAFETENSORS_INDEX).exists() or (folder / SAFETENSORS_INDEX).is_symlink():
        index_path = folder / SAFETENSORS_INDEX
        if (bad := config_json_problem(index_path)) is not None:
            problems.add(f"the shard index {bad}")
            return []
        weight_map = json.loads(index_path.read_text(encoding="utf-8")).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            problems.add(f"{index_path} has no weight_map")
            return []
        by_file: dict[str, list[str]] = {}
        for tensor, file in weight_map.items():
            by_file.setdefault(str(file), []).append(tensor)
        files = sorted(by_file)
    elif (folder / SAFETENSORS_SINGLE).exists() or (folder / SAFETENSORS_SINGLE).is_symlink():
        by_file, files = {}, [SAFETENSORS_SINGLE]
    else:
        return _check_bin_weights(folder, problems)
    names: set[str] = set()
    present: list[Path] = []
    for file in files:
        path = folder / file
        if not path.is_file():
            problems.add(f"weight file {_missing(folder, file)}" + (f" (listed in {SAFETENSORS_INDEX})" if by_file else ""))
            continue
        present.append(path)
        try:
            header = read_safetensors_header(path)
        except ValueError as e:
            problems.add(f"weight file {path} is {e}" if str(e).startswith(("truncated", "corrupt")) else f"weight file {path}: {e}")
            continue
        keys = set(header) - {"__metadata__"}
        lost = [t for t in by_file.get(file, []) if t not in keys]
        if lost:
            problems.add(f"weight file {path} lacks {len(lost)} tensors that {SAFETENSORS_INDEX} places there "
                         f"(first: {lost[0]}): a shard from another model or revision?")
        names |= keys
    if names and len(present) == len(files):
        _check_tensor_names(names, num_layers, folder, problems, family)
    return present


def _check_bin_weights(folder: Path, problems: _Problems) -> list[Path]:
    import zipfile

    if (folder / BIN_INDEX).exists():
        if (bad := config_json_problem(folder / BIN_INDEX)) is not None:
            problems.add(f"the shard index {bad}")
            return []
        files = sorted(set(map(str, json.loads((folder / BIN_INDEX).read_text(encoding="utf-8")).get("weight_map", {}).values())))
    elif (folder / BIN_SINGLE).exists() or (folder / BIN_SINGLE).is_symlink():
        files = [BIN_SINGLE]
    else:
        problems.add(f"no weights: neither {SAFETENSORS_SINGLE}, {SAFETENSORS_INDEX}, {BIN_SINGLE} nor {BIN_INDEX}")
        return []
    present = []
    for file in files:
        path = folder / file
        if not path.is_file():
            problems.add(f"weight file {_missing(folder, file)}")
            continue
        present.append(path)
        try:
            with zipfile.ZipFile(path) as zf:   # reads the central directory at the end: truncation fails here
                zf.namelist()
        except (zipfile.BadZipFile, OSError) as e:
            problems.add(f"weight file {path} is truncated or corrupt ({e})")
    return present


def _check_tensor_names(names: set[str], num_layers: int | None, folder: Path, problems: _Problems,
                        family: Family) -> None:
    vision = family.vision_weights
    layers = {int(m.group(1)) for name in names
              if vision not in name and "vision" not in name and (m := _DECODER_LAYER.search(name))}
    if layers and not any(vision in name for name in names):
        problems.add(f"the weights in {folder} have no vision encoder (no tensor named '*{vision}*', which "
                     f"{family.name} has): text-only weights")
    if layers and num_layers is not None and layers != set(range(num_layers)):
        problems.add(f"the weights hold decoder layers {min(layers)}..{max(layers)} ({len(layers)} layers) but config.json "
                     f"says num_hidden_layers {num_layers}: weights and config are from different models")


def _check_tokenizer_and_processor(folder: Path, raw: dict, problems: _Problems, family: Family) -> None:
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        problems.add(f"no tokenizer: {' or '.join(TOKENIZER_FILES)} is missing")
    if not (folder / "tokenizer_config.json").is_file():
        problems.add("tokenizer_config.json is missing")
    processor_files = [f for f in PROCESSOR_FILES if (folder / f).is_file()]
    if not processor_files:
        problems.add(f"no image processor config: {' or '.join(PROCESSOR_FILES)} is missing")
    template = any((folder / f).is_file() for f in CHAT_TEMPLATE_FILES)
    image_seq_length = None
    for name in ("tokenizer_config.json", *processor_files):
        try:
            data = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue   # reported by the JSON pass
        if isinstance(data, dict):
            template = template or bool(data.get("chat_template"))
            if name in PROCESSOR_FILES and data.get("image_seq_length") is not None:
                image_seq_length = data.get("image_seq_length")
    if not template and family.prompt_format == CHAT:
        problems.add(f"no chat template: none of {', '.join(CHAT_TEMPLATE_FILES)}, nor a chat_template entry in "
                     "tokenizer_config.json / processor_config.json")
    mm_tokens = raw.get("mm_tokens_per_image")
    if image_seq_length is not None and mm_tokens is not None and int(image_seq_length) != int(mm_tokens):
        problems.add(f"the processor's image_seq_length {image_seq_length} differs from config.json's "
                     f"mm_tokens_per_image {mm_tokens}: processor and model are from different checkpoints")


def _model_files(folder: Path) -> list[Path]:
    out = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or IGNORED_FILES.search(name):
                continue
            out.append(Path(root) / name)
    return out


def fingerprint(folder: str | Path) -> str:
    """Cheap identity of a model folder's content: ``sha256:<hex>``.

    Weight files (and any file over 64 MiB) enter by name, size and mtime, or, when they are links
    into the hub cache's content-addressed blobs, by blob name; smaller files by their sha256.
    """
    folder = Path(folder)
    h = hashlib.sha256()
    for path in _model_files(folder):
        rel = path.relative_to(folder).as_posix()
        try:
            st = path.stat()
        except OSError:
            h.update(f"{rel}\tmissing\n".encode())
            continue
        if path.name.endswith(WEIGHT_SUFFIXES) or st.st_size > HASHED_MAX_BYTES:
            real = Path(os.path.realpath(path))
            ident = f"blob:{real.name}" if real.parent.name == "blobs" else f"mtime_ns:{st.st_mtime_ns}"
            h.update(f"{rel}\t{st.st_size}\t{ident}\n".encode())
        else:
            h.update(f"{rel}\t{st.st_size}\tsha256:{hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode())
    return f"sha256:{h.hexdigest()}"


def check_model(model: str, revision: str | None = None) -> dict:
    """Check ``--model`` without loading weights; raise LayerwiseError listing every problem.

    Returns ``{"id", "revision", "path", "model_type", "architecture", "num_layers", "hidden_size",
    "max_position_embeddings", "image_tokens", "weight_files", "weight_bytes", "fingerprint"}``.
    """
    model = str(model)
    folder, resolved = resolve_model_dir(model, revision)
    problems = _Problems(model, folder)
    config_path = folder / "config.json"
    if not config_path.is_file() and not config_path.is_symlink():
        problems.add("has no config.json (is this a model folder? it should hold config.json, the weights and "
                     "the tokenizer/processor files, as `hf download` writes them)")
        problems.raise_if_any()
    if (bad := config_json_problem(config_path)) is not None:
        problems.add(f"cannot read the model config: {bad}")
        problems.raise_if_any()
    raw = json.loads(config_path.read_text(encoding="utf-8"))
    family = _check_config(raw, folder, problems)
    problems.raise_if_any()          # the rest presumes a supported configuration
    for path in _model_files(folder):
        if path.suffix == ".json" and path.name != "config.json" and (bad := config_json_problem(path)):
            problems.add(bad)
    num_layers = hidden_size = max_positions = None
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
        text = config.get_text_config()
        num_layers, hidden_size = int(text.num_hidden_layers), int(text.hidden_size)
        max_positions = int(text.max_position_embeddings)
    except Exception as e:  # noqa: BLE001 - transformers raises many types for a bad config
        import transformers

        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        problems.add(f"transformers {transformers.__version__} cannot read {config_path} ({first})")
    weights = _check_weights(folder, num_layers, problems, family)
    _check_tokenizer_and_processor(folder, raw, problems, family)
    problems.raise_if_any()
    model_type = str(raw["model_type"])
    return {
        "id": model,
        "revision": resolved,
        "path": str(folder),
        "model_type": model_type,
        "architecture": family.architecture,
        "num_layers": num_layers,
        "hidden_size": hidden_size,
        "max_position_embeddings": max_positions,
        "image_tokens": int(raw["mm_tokens_per_image"]) if raw.get("mm_tokens_per_image") is not None else None,
        "weight_files": [p.relative_to(folder).as_posix() for p in weights],
        "weight_bytes": sum(p.stat().st_size for p in weights),
        "fingerprint": fingerprint(folder),
    }


def load_processor(model: str, revision: str | None = None):
    """The model's processor (tokenizer + image processor config; no weights), from the same folder
    :func:`check_model` checked; right padding, as ``model.load_model`` sets it."""
    from transformers import AutoProcessor

    folder, _ = resolve_model_dir(model, revision)
    try:
        processor = AutoProcessor.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:  # noqa: BLE001
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LayerwiseError(f"{MODEL_PARAM} '{model}' ({folder}): cannot load its processor/tokenizer "
                             f"({type(e).__name__}: {first})") from None
    if not hasattr(processor, "tokenizer") or not hasattr(processor, "image_processor"):
        raise LayerwiseError(f"{MODEL_PARAM} '{model}' ({folder}): its processor ({type(processor).__name__}) has no "
                             "tokenizer and image processor; an image-text processor is needed")
    processor.tokenizer.padding_side = "right"
    return processor
