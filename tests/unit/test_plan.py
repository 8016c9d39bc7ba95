"""Model facts, languages, shards and plan.json (layerwise/preflight/plan.py) and the layerwise-preflight CLI."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from layerwise.core.errors import LayerwiseError
from layerwise.core.sheet import parse_rows
from layerwise.models.loading import read_model_info
from layerwise.preflight.plan import make_plan, make_shards, parse_languages
from layerwise.preflight.samplesheet import read_samplesheet

REPO = Path(__file__).resolve().parents[2]
PREFLIGHT = REPO / "bin" / "layerwise-preflight"
PROMPTS = {"english": "Describe the person in this image.", "arabic": "صف الشخص في هذه الصورة."}
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def tiny_config(num_layers=6, hidden_size=64):
    from transformers import Gemma3Config

    return Gemma3Config(text_config=dict(
        num_hidden_layers=num_layers, hidden_size=hidden_size, intermediate_size=128,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, vocab_size=512,
    ))


@pytest.fixture
def model_dir(tmp_path):
    path = tmp_path / "tiny-gemma3"
    tiny_config().save_pretrained(path)
    return path


@pytest.fixture
def offline_env(tmp_path, monkeypatch):
    home = tmp_path / "hf_home"
    home.mkdir()
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


def make_sheet(folder: Path, n: int, dup: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        Image.new("RGB", (4, 4), (i * 20 % 255, 0, 0)).save(folder / f"im{i}.png")
        rows.append([f"s{i:03d}", f"im{i}.png", ["male", "female", "unknown"][i % 3], f"caption {i}", f"وصف {i}"])
    if dup:
        rows[-1][0] = rows[0][0]
    path = folder / "samples.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["sample_id", "image", "gender", "caption_english", "caption_arabic"])
        w.writerows(rows)
    return path


INFO = {"id": "google/gemma-3-4b-it", "revision": COMMIT, "num_layers": 34, "hidden_size": 2560, "model_type": "gemma3"}


# ---------------------------------------------------------------- model info

def test_model_info_from_local_folder(model_dir, offline_env):
    info = read_model_info(str(model_dir))
    assert info == {"id": str(model_dir), "revision": "local", "num_layers": 6, "hidden_size": 64, "model_type": "gemma3"}


def test_model_info_from_prefilled_hf_home_cache(model_dir, offline_env):
    repo = offline_env / "hub" / "models--someorg--tiny-gemma3"
    snap = repo / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    (snap / "config.json").write_text((model_dir / "config.json").read_text())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    info = read_model_info("someorg/tiny-gemma3")
    assert (info["num_layers"], info["hidden_size"], info["revision"]) == (6, 64, COMMIT)


def test_model_not_in_offline_cache_explains_what_was_tried(offline_env):
    with pytest.raises(LayerwiseError) as e:
        read_model_info("nobody-xyz/no-such-model-123")
    msg = str(e.value)
    assert "--model 'nobody-xyz/no-such-model-123'" in msg
    assert "local folder" in msg and "does not exist" in msg
    assert "hub id 'nobody-xyz/no-such-model-123'" in msg
    assert str(offline_env / "hub") in msg and "HF_HUB_OFFLINE=1" in msg
    assert "hf download nobody-xyz/no-such-model-123" in msg
    assert "huggingface-cli download nobody-xyz/no-such-model-123" in msg
    assert "--hf_home" in msg and "local model folder" in msg


def test_model_local_path_errors(tmp_path, offline_env):
    with pytest.raises(LayerwiseError, match="--model .*local folder .*does not exist") as e:
        read_model_info(str(tmp_path / "missing" / "model"))
    assert "hub id" not in str(e.value)  # an obvious path is not tried as a hub id
    (tmp_path / "empty").mkdir()
    with pytest.raises(LayerwiseError, match="has no config.json"):
        read_model_info(str(tmp_path / "empty"))


# ---------------------------------------------------------------- languages and shards

def test_parse_languages():
    assert parse_languages("English, arabic english", PROMPTS) == ["english", "arabic"]
    assert parse_languages(["arabic"], PROMPTS, ["caption_arabic"]) == ["arabic"]


@pytest.mark.parametrize("spec, kw, fragment", [
    ("french", {"prompts": PROMPTS}, "no prompt for french; languages with a prompt: english, arabic"),
    ("english,arabic", {"columns": ["caption_english"]}, "no caption column for caption_arabic; caption columns present: caption_english"),
    (" , ", {}, "is empty"),
    ("eng-lish", {}, "not a language key"),
])
def test_parse_languages_errors(spec, kw, fragment):
    with pytest.raises(LayerwiseError) as e:
        parse_languages(spec, **kw)
    assert "--languages" in str(e.value) and fragment in str(e.value)


@pytest.mark.parametrize("n, size, rows", [
    (10, 0, ["0:10"]), (10, 10, ["0:10"]), (10, 99, ["0:10"]), (10, 4, ["0:4", "4:8", "8:10"]),
    (10, 5, ["0:5", "5:10"]), (3, 1, ["0:1", "1:2", "2:3"]), (10, "4", ["0:4", "4:8", "8:10"]), (7, None, ["0:7"]),
])
def test_shards(n, size, rows):
    shards = make_shards(n, size)
    assert [s["rows"] for s in shards] == rows and [s["index"] for s in shards] == list(range(len(rows)))
    covered = [i for s in shards for i in parse_rows(s["rows"], n)]
    assert covered == list(range(n))


@pytest.mark.parametrize("size", [-1, "x"])
def test_shard_errors(size):
    with pytest.raises(LayerwiseError, match="--samples_per_task"):
        make_shards(10, size)


# ---------------------------------------------------------------- plan

def test_plan_structure(tmp_path):
    df = read_samplesheet(make_sheet(tmp_path, 5), ["english", "arabic"])
    plan = make_plan(df, INFO, "0-3 10", "english,arabic", "auto", 2, prompts=PROMPTS)
    assert list(plan) == ["model", "layers", "languages", "shards", "layer_groups", "units"]
    assert plan["model"] == {**INFO, "fingerprint": None}   # PREFLIGHT adds the model's fingerprint
    assert plan["layers"] == [0, 1, 2, 3, 10]
    assert plan["languages"] == ["english", "arabic"]
    assert plan["shards"] == [{"index": 0, "rows": "0:2"}, {"index": 1, "rows": "2:4"}, {"index": 2, "rows": "4:5"}]
    assert plan["layer_groups"] == [[0, 1, 2, 3], [10]]
    assert len(plan["units"]) == 2 * 2 * 3
    assert plan["units"][0] == {"id": "L0-3_english_s0", "layers": [0, 1, 2, 3], "layers_str": "0-3",
                                "language": "english", "shard": 0, "rows": "0:2", "sheet": "L0-3_english_s0.csv"}
    assert len({u["id"] for u in plan["units"]}) == len(plan["units"])
    order = [(u["layers"][0], u["language"], u["shard"]) for u in plan["units"]]
    assert order == [(g, lang, s) for g in (0, 10) for lang in ("english", "arabic") for s in (0, 1, 2)]
    json.dumps(plan)  # plain JSON types only


def test_plan_seed_layout(tmp_path):
    df = read_samplesheet(make_sheet(tmp_path, 3), ["english"])
    plan = make_plan(df, INFO, "all", ["english"], "4", 0)
    assert [(g[0], g[-1]) for g in plan["layer_groups"]] == [(0, 8), (9, 16), (17, 24), (25, 33)]
    assert plan["shards"] == [{"index": 0, "rows": "0:3"}]
    assert [u["layers"] for u in plan["units"]] == plan["layer_groups"]


def test_plan_errors_name_parameters(tmp_path):
    df = read_samplesheet(make_sheet(tmp_path, 3), ["english"])
    with pytest.raises(LayerwiseError, match="--layers"):
        make_plan(df, INFO, "0-34", ["english"], "auto", 0)
    with pytest.raises(LayerwiseError, match="--layer_groups"):
        make_plan(df, INFO, "0-3", ["english"], "9", 0)
    with pytest.raises(LayerwiseError, match="--languages.*caption_arabic"):
        make_plan(df.drop(columns=["caption_arabic"], errors="ignore"), INFO, "0-3", ["arabic"], "auto", 0)


# ---------------------------------------------------------------- CLI

def run_preflight(tmp_path, sheet, model, *extra, layers="0-2 4"):
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, str(PREFLIGHT), "--samplesheet", str(sheet), "--model", str(model), "--layers", layers,
           "--languages", "english,arabic", "--layer-groups", "auto", "--samples-per-task", "2",
           "--out-dir", str(tmp_path / "out"), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)


def test_cli_end_to_end(tmp_path, tiny_model_dir):
    sheet = make_sheet(tmp_path / "data", 3)
    r = run_preflight(tmp_path, sheet, tiny_model_dir)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["plan.json", "samplesheet.valid.csv", "storage_plan.json", "units"]
    plan = json.loads((out / "plan.json").read_text(encoding="utf-8"))
    # one input sheet per unit: exactly its shard's rows and its language's caption
    for unit in plan["units"]:
        part = pd.read_csv(out / "units" / unit["sheet"], dtype=str, keep_default_na=False)
        start, end = (int(x) for x in unit["rows"].split(":"))
        assert part["row"].astype(int).tolist() == list(range(start, end))
        assert list(part.columns) == ["row", "sample_id", "image", "image_sha256", "gender",
                                      f"caption_{unit['language']}"]
    assert plan["model"]["fingerprint"].startswith("sha256:")
    assert plan["model"]["num_layers"] == 6 and plan["model"]["revision"] == "local"
    assert plan["layer_groups"] == [[0, 1, 2], [4]] and plan["languages"] == ["english", "arabic"]
    assert len(plan["units"]) == 2 * 2 * 2
    valid = pd.read_csv(out / "samplesheet.valid.csv", dtype=str, keep_default_na=False)
    assert list(valid.columns) == ["row", "sample_id", "image", "image_sha256", "gender", "caption_english",
                                   "caption_arabic"]
    assert all(Path(p).is_absolute() for p in valid["image"]) and valid["caption_arabic"][0] == "وصف 0"
    assert "3 samples" in r.stdout or "samples    3" in r.stdout
    assert "units      8" in r.stdout


def test_cli_duplicate_id_exits_2_without_plan(tmp_path, tiny_model_dir):
    sheet = make_sheet(tmp_path / "data", 3, dup=True)
    r = run_preflight(tmp_path, sheet, tiny_model_dir)
    assert r.returncode == 2
    assert r.stderr.startswith("ERROR: ") and "Traceback" not in r.stderr
    assert "row 3 (sample s000)" in r.stderr and "duplicate" in r.stderr and "row 1" in r.stderr
    assert not (tmp_path / "out" / "plan.json").exists()


@pytest.mark.parametrize("extra, layers, fragment", [
    ((), "0-6", "--layers: layer 6 (in '0-6') is out of range"),
    (("--layer-groups", "7"), "all", "--layer_groups 7"),
])
def test_cli_bad_options_exit_2(tmp_path, tiny_model_dir, extra, layers, fragment):
    r = run_preflight(tmp_path, make_sheet(tmp_path / "data", 2), tiny_model_dir, *extra, layers=layers)
    assert r.returncode == 2 and fragment in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out" / "plan.json").exists()


def test_cli_missing_model_exits_2(tmp_path):
    r = run_preflight(tmp_path, make_sheet(tmp_path / "data", 2), "nobody-xyz/no-such-model-123")
    assert r.returncode == 2 and "ERROR: --model 'nobody-xyz/no-such-model-123'" in r.stderr
    assert "huggingface-cli download" in r.stderr
