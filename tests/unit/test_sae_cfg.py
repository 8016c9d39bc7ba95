"""cfg.json in SAELens's conventions: every key the tools around SAELens read, checked on a trained SAE.

One tiny SAE is trained the way the pipeline trains it: TRAIN_SAE's staged layer files are links into
`<outdir>/layer_checkpoints/`, the model is a local folder (the pipeline passes it as an absolute path), and the
outdir holds the verified samplesheet. The SAE is reloaded with `SAE.load_from_disk` and handed to
`ActivationsStore.from_sae`, which failed with "context_size is required" before cfg.json had it. The family
table's `decoder_layers` (metadata.hf_hook_name) is checked against the module names walked in every family's
tiny model.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from layerwise.core import schema
from layerwise.models.families import FAMILIES
from layerwise.sae.outputs import HF_DECODER_LAYERS, clean_model_name, model_facts
from tests.support import sae_synthetic as synthetic

pytestmark = pytest.mark.usefixtures("quiet_offline_trainer")

LAYER, HIDDEN, N_SAMPLES = 3, 16, 24
SAELENS_KEYS = ("model_name", "hook_name", "hook_head_index", "hf_hook_name", "prepend_bos", "context_size",
                "dataset_path", "exclude_special_tokens", "neuronpedia_id")


@pytest.fixture(scope="module")
def run(tmp_path_factory, fixture_dir):
    """A pipeline-shaped run: model folder, outdir (layer files + samplesheet), task folder with staged links."""
    from layerwise.commands import train_sae

    root = tmp_path_factory.mktemp("sae-cfg")
    model_dir = root / "models" / "tiny-gemma3-vlm"
    model_dir.mkdir(parents=True)
    shutil.copy(fixture_dir / "families" / "gemma3" / "config.json", model_dir)   # a real Gemma 3 config.json
    outdir = root / "results"
    sheet = outdir / "pipeline_info" / "samplesheet.valid.csv"
    sheet.parent.mkdir(parents=True)
    sheet.write_text("row,sample_id,image,gender,caption_english,caption_arabic\n"
                     + "".join(f"{i},img{i:05d},img{i}.png,unknown,a,b\n" for i in range(N_SAMPLES)), encoding="utf-8")
    staged = []
    for language in ("english", "arabic"):
        ids = [f"img{i:05d}" for i in range(N_SAMPLES)]
        kinds = [synthetic.sample_kinds(4, 2, 2 + i % 5) for i in range(N_SAMPLES)]
        rows = [synthetic.planted_rows(LAYER, language, sid, k, HIDDEN, n_features=HIDDEN, active=3)
                for sid, k in zip(ids, kinds)]
        published = synthetic.write_layer_file(
            outdir / "layer_checkpoints" / schema.layer_filename(LAYER, language), layer=LAYER, language=language,
            sample_ids=ids, rows=rows, kinds=kinds, layout="ragged", model_id=str(model_dir.absolute()))
        link = root / "work" / "activations" / published.name          # how Nextflow stages TRAIN_SAE's inputs
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(published)
        staged.append(link)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rc = train_sae.main(["--out-dir", str(root / "work"), "--metrics", str(root / "work" / "metrics.parquet"),
                             "--d-sae", "32", "--k", "4", "--training-tokens", "1024", "--batch-size", "64",
                             "--chunk-tokens", "128", "--buffer-tokens", "256", "--validation-fraction", "0.25",
                             "--norm-estimate-batches", "1", "--device", "cpu", *map(str, staged)])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    return {"folder": root / "work" / f"layer_{LAYER}", "model_dir": model_dir, "sheet": sheet, "root": root,
            "published": [Path(os.path.realpath(p)) for p in staged]}


def test_cfg_json_has_every_key_saelens_and_its_tools_read(run):
    from sae_lens import SAE

    raw = json.loads((run["folder"] / "cfg.json").read_text())
    assert set(SAELENS_KEYS) <= set(raw["metadata"])      # SAELens 6: these live under "metadata", present even if null
    assert raw["metadata"]["neuronpedia_id"] is None
    sae = SAE.load_from_disk(run["folder"])
    meta = sae.cfg.metadata
    # context_size: the longest stored sequence, read here from the files themselves
    longest = max(int(torch.load(p, weights_only=True, mmap=True)["lengths"].max()) for p in run["published"])
    assert meta.context_size == longest == len(synthetic.sample_kinds(4, 2, 6))   # the sample with the longest caption
    assert meta.dataset_path == str(run["sheet"].resolve())
    assert meta.layerwise_dataset_sha256 == hashlib.sha256(run["sheet"].read_bytes()).hexdigest()
    assert meta.exclude_special_tokens is True                  # the default filter drops bos
    assert (meta.layerwise_keep_kinds, meta.layerwise_drop_kinds) == ("all", "bos")
    assert meta.layerwise_token_kinds == ["image", "prompt", "caption", "template"]
    assert meta.hf_hook_name == f"model.language_model.layers.{LAYER}" == FAMILIES["gemma3"].hf_hook_name(LAYER)
    assert meta.hook_name == f"blocks.{LAYER}.hook_resid_post" and meta.prepend_bos is True
    assert meta.layerwise_model_type == "gemma3"
    # a clean model name: the local folder's name, no filesystem path, and none in get_name()
    assert meta.model_name == "tiny-gemma3-vlm"
    assert str(run["root"]) not in json.dumps(raw["metadata"]["model_name"]) and "/" not in meta.model_name
    assert sae.get_name() == f"sae_tiny-gemma3-vlm_blocks.{LAYER}.hook_resid_post_32"
    training = json.loads((run["folder"] / "training.json").read_text())
    assert training["model_id"] == str(run["model_dir"].absolute())        # the path stays in training.json
    assert training["samplesheet"] == {"path": meta.dataset_path, "sha256": meta.layerwise_dataset_sha256}


def test_activations_store_from_sae_reads_the_cfg(run, tmp_path):
    """`ActivationsStore.from_sae` takes hook_name, context_size and prepend_bos from the cfg (each required).
    It needs a TransformerLens model object, which it only stores (a VLM cannot be one); the smallest one,
    an empty HookedRootModule, is enough, with a pre-tokenized dataset of the cfg's context size."""
    from datasets import Dataset
    from sae_lens import SAE, ActivationsStore
    from transformer_lens import HookedRootModule

    sae = SAE.load_from_disk(run["folder"])
    n = sae.cfg.metadata.context_size
    tokens = Dataset.from_dict({"tokens": [[1 + (i + j) % 50 for j in range(n)] for i in range(6)]})
    store = ActivationsStore.from_sae(model=HookedRootModule(), sae=sae, dataset=tokens, streaming=False,
                                      store_batch_size_prompts=2, device="cpu")
    assert (store.context_size, store.hook_name, store.d_in) == (n, f"blocks.{LAYER}.hook_resid_post", HIDDEN)
    assert tuple(store.get_batch_tokens(2, move_to_model_device=False).shape) == (2, n)
    # ...and the failure this fixes, on a copy of the folder whose cfg.json lacks the key as before
    old = tmp_path / "old"
    shutil.copytree(run["folder"], old)
    cfg = json.loads((old / "cfg.json").read_text())
    del cfg["metadata"]["context_size"]
    (old / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="context_size is required"):
        ActivationsStore.from_sae(model=HookedRootModule(), sae=SAE.load_from_disk(old), dataset=tokens)


def test_model_name_is_never_a_local_path(tmp_path):
    hub = "google/gemma-3-4b-it"
    assert clean_model_name(hub, None) == hub                          # a hub id, as given
    assert clean_model_name("", None) == ""
    folder = tmp_path / "my-vlm"
    folder.mkdir()
    assert clean_model_name(str(folder), {"_name_or_path": hub}) == hub           # the hub id it was saved from
    for declared in (str(tmp_path / "elsewhere"), "./ckpt", "/fsx/run/checkpoint-1000", "a/b/c", ""):
        assert clean_model_name(str(folder), {"_name_or_path": declared}) == "my-vlm"   # a path: the folder's name
    assert clean_model_name(str(folder) + "/", None) == "my-vlm"
    snapshot = tmp_path / "hub" / "models--google--gemma-3-4b-it" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    assert clean_model_name(str(snapshot), {}) == hub                  # a hub cache snapshot folder: its hub id


def test_model_type_from_the_outdir_when_the_config_cannot_be_read(tmp_path):
    facts = model_facts("nobody/not-in-any-cache")
    assert (facts.model_type, facts.hf_hook_name(5), facts.model_name) == (None, None, "nobody/not-in-any-cache")
    (tmp_path / schema.METADATA_JSON).write_text(json.dumps({"model": {"id": "nobody/not-in-any-cache",
                                                                       "model_type": "smolvlm"}}))
    facts = model_facts("nobody/not-in-any-cache", tmp_path)
    assert (facts.model_type, facts.model_type_from) == ("smolvlm", "extraction_metadata")
    assert facts.hf_hook_name(5) == "model.text_model.layers.5"


def test_hf_hook_name_is_the_walked_module_name_in_every_familys_tiny_model(fixture_dir):
    """The template equals the name `named_modules()` gives the very module the capture hooks
    (`get_decoder().layers[L]`), for every layer of every family's tiny model as production loads it."""
    from transformers import AutoModelForImageTextToText

    from layerwise.models.capture import decoder_layers

    assert HF_DECODER_LAYERS == {t: f.decoder_layers for t, f in FAMILIES.items()}   # the SAE stage's copy agrees
    for model_type, family in sorted(FAMILIES.items()):
        folder = fixture_dir / "families" / model_type
        model = AutoModelForImageTextToText.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
        names = {id(m): name for name, m in model.named_modules()}
        layers = decoder_layers(model)
        walked = [names[id(m)] for m in layers]
        assert walked == [family.hf_hook_name(i) for i in range(len(layers))], model_type
        assert model.get_submodule(family.hf_hook_name(len(layers) - 1)) is layers[-1]
