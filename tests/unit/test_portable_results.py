"""Portable results: image paths relative to the run's image root, and the token string of every stored row.

The tiny fixture run in-process as the pipeline runs it: PREFLIGHT's verified sheet, plan and unit sheets
(`layerwise.preflight`), every extraction unit (`run_unit`), then `publish_run`. The images and the outdir
are then copied elsewhere and the originals removed (an rsync to a laptop). Expected tokens come from an
independent path: the fixture's tokenizer loaded here with AutoTokenizer, and the layer files themselves.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import AutoTokenizer

from layerwise.core import schema
from layerwise.core.errors import LayerwiseError
from layerwise.extract.unit import UnitConfig, run_unit
from layerwise.layerfile.loader import open_layers
from layerwise.layerfile.store import load_layer_file, sample_rows
from layerwise.models.loading import load_model, read_model_info
from layerwise.preflight.plan import make_plan, write_unit_sheets
from layerwise.publish.outdir import publish_run
from tests.support.sheets import verified_sheet

LANGUAGES = ("english", "arabic")
KIND_NAMES = {code: name for name, code in schema.TOKEN_KINDS.items()}


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    return load_model(str(tiny_model_dir), dtype="float32", device="cpu")


def extract_and_publish(root: Path, data: Path, model_dir: Path, loaded, *, layers: str, groups: str,
                        per_task: int, languages=LANGUAGES, **unit_kw) -> dict:
    """PREFLIGHT's files for the samplesheet in `data`, every unit of the plan, publish: the run's folders."""
    pre = root / "preflight"
    valid = verified_sheet(data / "samples.csv", pre, languages)
    df = pd.read_csv(valid, dtype=str, keep_default_na=False)
    plan = make_plan(df, read_model_info(str(model_dir)), layers, ",".join(languages), groups, per_task)
    (pre / "plan.json").write_text(json.dumps(plan))
    write_unit_sheets(df, plan, pre)
    unit_dirs = []
    for unit in plan["units"]:
        out = root / "work" / unit["id"]
        cfg = UnitConfig(samplesheet=str(pre / "units" / unit["sheet"]), model=str(model_dir),
                         language=unit["language"], layers=unit["layers_str"], out_dir=str(out), dtype="float32",
                         device="cpu", **unit_kw)
        run_unit(cfg, loaded=loaded)
        unit_dirs.append(out)
    outdir = root / "results"
    meta = publish_run(plan, valid, unit_dirs, outdir, plan_file=pre / "plan.json")
    return {"plan": plan, "valid": valid, "units": unit_dirs, "outdir": outdir, "meta": meta}


@pytest.fixture(scope="module")
def run(tmp_path_factory, fixture_dir, tiny_model_dir, loaded):
    """Two layer groups x two languages x two shards (8 units), all tokens, padded: the default files."""
    root = tmp_path_factory.mktemp("portable")
    data = root / "data"
    shutil.copytree(fixture_dir / "data", data)             # the user's samplesheet and its images
    out = extract_and_publish(root, data, tiny_model_dir, loaded, layers="0 2", groups="auto", per_task=6,
                              image_cache=str(root / "image-cache"))     # the vision tower once per image
    return {**out, "root": root, "data": data}


def stored(path: Path) -> list[tuple[str, int, int, int]]:
    """(sample_id, position, token_id, kind) of every row a layer file stores, read with the format's helper."""
    d = load_layer_file(path)
    rows = []
    for i, sid in enumerate(d["sample_ids"]):
        _, ids = sample_rows(d, i)
        kinds = sample_rows({**d, "activations": d["token_kinds"]}, i)[0]
        rows += [(sid, p, int(t), int(k)) for p, (t, k) in enumerate(zip(ids.tolist(), kinds.tolist()))]
    return rows


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# -- image paths ---------------------------------------------------------------------------------
def test_image_relative_joined_with_the_recorded_root_is_the_absolute_path(run):
    meta = json.loads((run["outdir"] / schema.METADATA_JSON).read_text())
    assert meta["status"] == "passed"
    root = meta["image_root"]
    assert Path(root) == (run["data"] / "images").resolve()     # the deepest folder holding every image
    samples = pd.read_parquet(run["outdir"] / schema.SAMPLES_PARQUET)
    assert list(samples.columns[3:5]) == ["image", "image_relative"]
    sheet = pd.read_csv(run["data"] / "samples.csv", dtype=str)
    for language in LANGUAGES:
        part = samples[samples["language"] == language]
        assert [str(Path(root) / rel) for rel in part["image_relative"]] == part["image"].tolist()
        assert part["image_relative"].tolist() == [Path(p).name for p in sheet["image"]]
        assert all(not Path(rel).is_absolute() for rel in part["image_relative"])


def test_moved_results_find_every_image_under_the_new_root(run, tmp_path):
    """Copy the images and the outdir elsewhere, remove the originals: image_root finds every image again."""
    laptop = tmp_path / "laptop"
    shutil.copytree(run["outdir"], laptop / "results")
    shutil.copytree(run["data"] / "images", laptop / "pictures")
    valid = pd.read_csv(run["valid"], dtype=str, keep_default_na=False)
    hidden = run["data"].with_name("data-moved-away")
    run["data"].rename(hidden)                              # the recorded absolute paths no longer exist
    try:
        assert not Path(valid["image"][0]).exists()
        for language in LANGUAGES:
            opened = open_layers(laptop / "results", language, image_root=laptop / "pictures")
            images = opened["images"]
            assert len(images) == len(valid) and opened["sample_ids"] == valid["sample_id"].tolist()
            for i, expected in enumerate(valid["image_sha256"]):
                found = images[i]
                assert found.parent == laptop / "pictures" and sha256(found) == expected
            assert images[-2:] == [images[len(valid) - 2], images[len(valid) - 1]]

        # without image_root: the layers open; reading an image names the missing file and the way out
        opened = open_layers(laptop / "results", "english")
        assert torch.equal(opened["activations"][2], load_layer_file(laptop / "results/layer_checkpoints/"
                                                                      "layer_2_english.pt")["activations"])
        with pytest.raises(LayerwiseError, match="image_root") as err:
            opened["images"][0]
        assert valid["image"][0] in str(err.value) and "'s000'" in str(err.value)
        # a wrong image_root: refused at once, naming every missing file
        with pytest.raises(LayerwiseError, match=r"12 of 12 images not found") as err:
            open_layers(laptop / "results", "arabic", image_root=laptop / "elsewhere")
        assert str(laptop / "elsewhere" / Path(valid["image"][0]).name) in str(err.value)
        # a samples.parquet written before image_relative existed: the same root rule, on its absolute paths
        table = laptop / "results" / schema.SAMPLES_PARQUET
        pd.read_parquet(table).drop(columns=["image_relative"]).to_parquet(table, index=False)
        again = open_layers(laptop / "results", "arabic", image_root=laptop / "pictures")["images"]
        assert [p.name for p in again] == [Path(p).name for p in valid["image"]]
    finally:
        hidden.rename(run["data"])
    # where the images are, the recorded paths are used as they are
    here = open_layers(run["outdir"], "english")["images"]
    assert [str(p) for p in here] == valid["image"].tolist()


# -- tokens ----------------------------------------------------------------------------------------
def test_tokens_table_mirrors_every_stored_row_with_the_tokenizers_strings(run, tiny_model_dir):
    outdir, plan = run["outdir"], run["plan"]
    assert len(plan["units"]) == 8 and len(plan["layer_groups"]) == 2 and len(plan["shards"]) == 2
    tokens = pd.read_parquet(outdir / schema.TOKENS_PARQUET)
    assert list(tokens.columns) == list(schema.TOKENS_COLUMNS)
    assert tokens["language"].unique().tolist() == list(LANGUAGES)     # --languages order
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir, local_files_only=True)
    for language in LANGUAGES:
        part = tokens[tokens["language"] == language]
        got = list(zip(part["sample_id"], part["position"], part["token_id"], part["kind"].map(schema.TOKEN_KINDS)))
        for layer in plan["layers"]:             # every layer file of the language stores the same rows
            rows = stored(outdir / "layer_checkpoints" / schema.layer_filename(layer, language))
            assert got == rows, (language, layer)
        lengths = load_layer_file(outdir / "layer_checkpoints" / schema.layer_filename(0, language))["lengths"]
        assert len(part) == int(lengths.sum())
        assert part["token"].tolist() == tokenizer.convert_ids_to_tokens(part["token_id"].tolist())
    assert {"image", "caption", "template"} <= set(tokens["kind"])
    assert (tokens["token"][tokens["kind"] == "image"] == "<image_soft_token>").all()
    meta = json.loads((outdir / schema.METADATA_JSON).read_text())
    assert schema.TOKENS_PARQUET in meta["outputs"]
    record = next(r for r in meta["published"] if r["path"] == schema.TOKENS_PARQUET)
    assert record["how"] == "written" and record["sha256"] == sha256(outdir / schema.TOKENS_PARQUET)
    assert next(c for c in meta["checks"] if c["name"] == "tokens")["passed"]


def test_every_unit_writes_its_shards_table_and_the_layer_groups_agree(run):
    plan = run["plan"]
    by_id = {d.name: d for d in run["units"]}
    for language in LANGUAGES:
        for shard in plan["shards"]:
            units = [u for u in plan["units"] if u["language"] == language and u["shard"] == shard["index"]]
            tables = [pd.read_parquet(by_id[u["id"]] / schema.UNIT_TOKENS_FILE) for u in units]
            assert len(tables) == 2
            pd.testing.assert_frame_equal(tables[0], tables[1])
            start, end = (int(x) for x in shard["rows"].split(":"))
            assert tables[0]["sample_id"].unique().tolist() == [f"s{i:03d}" for i in range(start, end)]


def test_a_unit_table_that_disagrees_with_the_layer_files_fails_publishing(run, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(run["root"] / "work", work)
    unit = work / run["plan"]["units"][0]["id"]      # the table publishing takes for (english, shard 0)
    table = pd.read_parquet(unit / schema.UNIT_TOKENS_FILE)
    table.loc[3, "token_id"] += 1
    table.to_parquet(unit / schema.UNIT_TOKENS_FILE, index=False)
    with pytest.raises(LayerwiseError, match=r"\[tokens\] english: token row 3 \(sample s000, position 3\)"):
        publish_run(run["plan"], run["valid"], [work / d.name for d in run["units"]], tmp_path / "results")
    (unit / schema.UNIT_TOKENS_FILE).unlink()        # the other layer group's table of that shard is taken instead
    meta = publish_run(run["plan"], run["valid"], [work / d.name for d in run["units"]], tmp_path / "results")
    assert meta["status"] == "passed"
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "results" / schema.TOKENS_PARQUET),
                                  pd.read_parquet(run["outdir"] / schema.TOKENS_PARQUET))


def test_mean_files_get_one_row_per_sample_without_a_token(tmp_path, fixture_dir, tiny_model_dir, loaded):
    """`mean` stores one pooled row per sample (token id -1): one tokens row each, token null, kind caption."""
    data = tmp_path / "data"                               # four samples are enough
    data.mkdir()
    sheet = pd.read_csv(fixture_dir / "data" / "samples.csv", dtype=str, keep_default_na=False).head(4)
    sheet["image"] = [str(fixture_dir / "data" / p) for p in sheet["image"]]
    sheet.to_csv(data / "samples.csv", index=False)
    out = extract_and_publish(tmp_path, data, tiny_model_dir, loaded, layers="2", groups="auto", per_task=0,
                              languages=("arabic",), token_selection="mean", layout="ragged")
    tokens = pd.read_parquet(out["outdir"] / schema.TOKENS_PARQUET)
    d = load_layer_file(out["outdir"] / "layer_checkpoints" / "layer_2_arabic.pt")
    assert tokens["sample_id"].tolist() == d["sample_ids"] == ["s000", "s001", "s002", "s003"]
    assert len(tokens) == int(d["lengths"].sum())
    assert (tokens["position"] == 0).all() and (tokens["token_id"] == schema.PAD_TOKEN_ID).all()
    assert tokens["token"].isna().all() and (tokens["kind"] == "caption").all()
    assert tokens["token_id"].tolist() == d["token_ids"].tolist()
