"""PREFLIGHT's model check (layerwise/preflight/model_check.py): damaged copies of the fixture model, no weights loaded."""
import hashlib
import json
import os
import shutil
import struct
from pathlib import Path

import pytest

from layerwise.core.errors import LayerwiseError
from layerwise.models.families import FAMILIES
from layerwise.models.loading import read_model_info
from layerwise.preflight.model_check import check_model, fingerprint, load_processor, read_safetensors_header

COMMIT = "89abcdef0123456789abcdef0123456789abcdef"


@pytest.fixture
def model(tmp_path, tiny_model_dir) -> Path:
    dest = tmp_path / "model"
    shutil.copytree(tiny_model_dir, dest)
    return dest


def failure(model, revision=None) -> str:
    with pytest.raises(LayerwiseError) as e:
        check_model(str(model), revision)
    return str(e.value)


def edit_config(folder: Path, change) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))


def shard(folder: Path) -> list[str]:
    """Split model.safetensors into two shards + model.safetensors.index.json, as large checkpoints are."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    names = sorted(tensors)
    files = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    halves = [names[: len(names) // 2], names[len(names) // 2:]]
    weight_map = {}
    for file, keys in zip(files, halves):
        save_file({k: tensors[k] for k in keys}, folder / file, metadata={"format": "pt"})
        weight_map.update({k: file for k in keys})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return files


# ---------------------------------------------------------------- good models

def test_fixture_model_passes_with_its_facts(model):
    info = check_model(str(model))
    assert info["model_type"] == "gemma3" and info["architecture"] == "Gemma3ForConditionalGeneration"
    assert (info["num_layers"], info["hidden_size"], info["max_position_embeddings"]) == (6, 64, 2048)
    assert info["revision"] == "local" and info["path"] == str(model)
    assert info["image_tokens"] == 16 and info["weight_files"] == ["model.safetensors"]
    assert info["weight_bytes"] == (model / "model.safetensors").stat().st_size
    assert info["fingerprint"].startswith("sha256:") and len(info["fingerprint"]) == 71
    assert set(FAMILIES) == {"gemma3", "paligemma", "qwen2_vl", "qwen2_5_vl", "llava", "llava_next", "mllama",
                             "idefics3", "smolvlm"}


def test_sharded_model_passes(model):
    files = shard(model)
    info = check_model(str(model))
    assert info["weight_files"] == files


def test_load_processor_needs_no_weights(model):
    (model / "model.safetensors").unlink()
    processor = load_processor(str(model))
    assert processor.tokenizer.padding_side == "right" and hasattr(processor, "image_processor")


# ---------------------------------------------------------------- config

def test_corrupt_config_json_names_the_file_and_json_error(model):
    text = (model / "config.json").read_text()
    (model / "config.json").write_text(text[: len(text) // 2])
    msg = failure(model)
    assert str(model / "config.json") in msg and "not valid JSON" in msg and "line " in msg
    assert "has no config.json" not in msg
    with pytest.raises(LayerwiseError) as e:          # read_model_info's error path too
        read_model_info(str(model))
    assert str(model / "config.json") in str(e.value) and "not valid JSON" in str(e.value)
    assert "has no config.json" not in str(e.value)


def test_empty_config_json(model):
    (model / "config.json").write_text("")
    assert "is empty" in failure(model)
    with pytest.raises(LayerwiseError, match="is empty"):
        read_model_info(str(model))


def test_missing_config_json(model):
    (model / "config.json").unlink()
    assert "has no config.json" in failure(model)


def test_text_only_gemma3_is_refused(model):
    def text_only(c):   # what a text-only checkpoint's config.json holds: no vision_config
        c.update(model_type="gemma3_text", architectures=["Gemma3ForCausalLM"])
        c.pop("vision_config")
    edit_config(model, text_only)
    msg = failure(model)
    assert "gemma3_text" in msg and "text-only" in msg and "no vision_config" in msg
    assert "Supported image-text families" in msg and str(model / "config.json") in msg
    assert all(family.name in msg for family in FAMILIES.values())


def test_gemma3_config_without_vision_config_is_refused(model):
    edit_config(model, lambda c: c.pop("vision_config"))
    msg = failure(model)
    assert "no vision_config" in msg and str(model / "config.json") in msg


@pytest.mark.parametrize("model_type", ["llama", "blip-2", "", "gemma2"])
def test_unsupported_model_types_list_what_is_supported(model, model_type):
    edit_config(model, lambda c: c.update(model_type=model_type))
    msg = failure(model)
    assert (repr(model_type) if model_type else "no model_type") in msg
    assert "image-text family layerwise does not run. Supported: gemma3 (Gemma 3" in msg
    assert all(f"{mt} (" in msg for mt in FAMILIES)


def test_wrong_architecture_name_is_refused(model):
    edit_config(model, lambda c: c.update(architectures=["Gemma3ForCausalLM"]))
    assert "names the architecture Gemma3ForCausalLM" in failure(model)


def test_text_only_weights_under_an_image_text_config(model):
    from safetensors.torch import load_file, save_file

    tensors = load_file(model / "model.safetensors")
    save_file({k: v for k, v in tensors.items() if "vision_tower" not in k}, model / "model.safetensors",
              metadata={"format": "pt"})
    assert "no vision encoder" in failure(model) and "'*vision_tower*'" in failure(model)


def test_config_and_weights_disagree_on_layers(model):
    edit_config(model, lambda c: c["text_config"].update(num_hidden_layers=8,
                                                         layer_types=c["text_config"]["layer_types"] + ["sliding_attention"] * 2))
    msg = failure(model)
    assert "decoder layers 0..5 (6 layers)" in msg and "num_hidden_layers 8" in msg


# ---------------------------------------------------------------- weights

def test_missing_weights(model):
    (model / "model.safetensors").unlink()
    assert "no weights" in failure(model)


@pytest.mark.parametrize("keep", [4, 8 + 100, 0.5, -1])
def test_truncated_safetensors_is_found_from_the_header(model, keep):
    path = model / "model.safetensors"
    data = path.read_bytes()
    n = keep if isinstance(keep, int) and keep > 0 else (int(len(data) * keep) if keep > 0 else len(data) - 1)
    path.write_bytes(data[:n])
    msg = failure(model)
    assert str(path) in msg and ("truncated" in msg or "does not fit" in msg), msg


def test_safetensors_with_extra_bytes_or_corrupt_header(model):
    path = model / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data + b"junk")
    assert "4 bytes longer than its header describes" in failure(model)
    (n,) = struct.unpack("<Q", data[:8])
    path.write_bytes(data[:8] + b"{" * n + data[8 + n:])
    assert "JSON header is corrupt" in failure(model)


def test_missing_and_truncated_shards(model):
    files = shard(model)
    (model / files[1]).unlink()
    msg = failure(model)
    assert f"{files[1]} is missing (listed in model.safetensors.index.json)" in msg
    shard_bytes = (model / files[0]).read_bytes()
    (model / files[0]).write_bytes(shard_bytes[:-10])
    msg = failure(model)
    assert msg.count("\n  - ") == 2 and str(model / files[0]) in msg and "truncated" in msg and files[1] in msg


def test_shard_index_pointing_at_the_wrong_shard(model):
    files = shard(model)
    index = json.loads((model / "model.safetensors.index.json").read_text())
    first = next(k for k, v in index["weight_map"].items() if v == files[0])
    index["weight_map"][first] = files[1]
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    msg = failure(model)
    assert f"lacks 1 tensors that model.safetensors.index.json places there (first: {first})" in msg


def test_corrupt_shard_index(model):
    shard(model)
    (model / "model.safetensors.index.json").write_text('{"weight_map": {')
    msg = failure(model)
    assert "model.safetensors.index.json" in msg and "not valid JSON" in msg


def test_read_safetensors_header_matches_the_library(model):
    from safetensors import safe_open

    header = read_safetensors_header(model / "model.safetensors")
    with safe_open(model / "model.safetensors", "pt") as f:
        assert set(f.keys()) == set(header) - {"__metadata__"}


# ---------------------------------------------------------------- tokenizer / processor files

@pytest.mark.parametrize("removed, fragment", [
    (["tokenizer.json"], "no tokenizer"),
    (["tokenizer_config.json"], "tokenizer_config.json is missing"),
    (["processor_config.json"], "no image processor config"),
    (["chat_template.jinja"], "no chat template"),
])
def test_missing_tokenizer_or_processor_files(model, removed, fragment):
    for name in removed:
        (model / name).unlink()
    assert fragment in failure(model)


def test_corrupt_tokenizer_json(model):
    text = (model / "tokenizer.json").read_text()
    (model / "tokenizer.json").write_text(text[:1000])
    msg = failure(model)
    assert str(model / "tokenizer.json") in msg and "not valid JSON" in msg


def test_processor_image_tokens_disagree_with_the_model(model):
    path = model / "processor_config.json"
    data = json.loads(path.read_text())
    data["image_seq_length"] = 256
    path.write_text(json.dumps(data))
    assert "image_seq_length 256 differs from config.json's mm_tokens_per_image 16" in failure(model)


def test_every_problem_is_listed_together(model):
    (model / "tokenizer.json").unlink()
    (model / "chat_template.jinja").unlink()
    data = (model / "model.safetensors").read_bytes()
    (model / "model.safetensors").write_bytes(data[:-1])
    msg = failure(model)
    assert msg.count("\n  - ") == 3


# ---------------------------------------------------------------- fingerprint

def test_fingerprint_follows_weights_metadata_and_small_file_content(model):
    base = fingerprint(model)
    assert fingerprint(model) == base
    (model / "README.md").write_text("docs do not matter")
    assert fingerprint(model) == base
    weights = model / "model.safetensors"
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))   # rewritten weights
    touched = fingerprint(model)
    assert touched != base
    tok = json.loads((model / "tokenizer_config.json").read_text())
    tok["model_max_length"] = 4096
    (model / "tokenizer_config.json").write_text(json.dumps(tok))
    assert fingerprint(model) != touched


# ---------------------------------------------------------------- hub ids from the HF cache

def make_hub_cache(home: Path, source: Path, repo="someorg/tiny-gemma3", skip=()) -> Path:
    """A hub cache as huggingface_hub writes it: content-addressed blobs, snapshot symlinks, refs/main."""
    root = home / "hub" / f"models--{repo.replace('/', '--')}"
    snap = root / "snapshots" / COMMIT
    (root / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    for file in sorted(source.iterdir()):
        data = file.read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        if file.name not in skip:
            blob.write_bytes(data)
        (snap / file.name).symlink_to(os.path.relpath(blob, snap))
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(COMMIT)
    return snap


@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


def test_hub_id_resolved_from_the_offline_cache(hf_home, tiny_model_dir):
    snap = make_hub_cache(hf_home, tiny_model_dir)
    info = check_model("someorg/tiny-gemma3")
    assert info["revision"] == COMMIT and info["path"] == str(snap) and info["num_layers"] == 6
    assert check_model("someorg/tiny-gemma3", COMMIT)["fingerprint"] == info["fingerprint"]


def test_hub_fingerprint_uses_blob_names_not_mtimes(hf_home, tiny_model_dir):
    snap = make_hub_cache(hf_home, tiny_model_dir)
    before = fingerprint(snap)
    blob = Path(os.path.realpath(snap / "model.safetensors"))
    st = blob.stat()
    os.utime(blob, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert fingerprint(snap) == before


def test_hub_download_that_did_not_finish(hf_home, tiny_model_dir):
    make_hub_cache(hf_home, tiny_model_dir, skip={"model.safetensors"})
    msg = failure("someorg/tiny-gemma3")
    assert "model.safetensors is a broken link into the Hugging Face cache" in msg


def test_hub_id_not_in_cache(hf_home):
    msg = failure("someorg/not-there")
    assert "hub id 'someorg/not-there'" in msg and "HF_HUB_OFFLINE=1" in msg and "hf download someorg/not-there" in msg


def test_corrupt_config_in_the_hub_cache_via_read_model_info(hf_home, tiny_model_dir, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(tiny_model_dir, src)
    (src / "config.json").write_text('{"model_type": "gemma3",')
    make_hub_cache(hf_home, src)
    with pytest.raises(LayerwiseError) as e:
        read_model_info("someorg/tiny-gemma3")
    assert "config.json" in str(e.value) and "not valid JSON" in str(e.value)
    assert "not valid JSON" in failure("someorg/tiny-gemma3")
