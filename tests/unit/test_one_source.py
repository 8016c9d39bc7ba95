"""Facts stated in more than one place agree with their owner.

- extraction defaults: `extract.UnitConfig` owns them; `bin/layerwise-extract` takes them from it, and
  `nextflow_schema.json` (read here, never edited by a test) must state the same;
- option values: `layerwise/core/schema.py` owns them; the pipeline schema's `enum`s must be the same;
- plan records: `contract.Plan` reads what `plan.make_plan` writes.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
from pathlib import Path

import pandas as pd
import pytest

from layerwise.core import contract, schema
from layerwise.extract.unit import UnitConfig

ROOT = Path(__file__).resolve().parents[2]
EXTRACTION_PARAMS = ("dtype", "device", "token_selection", "layout", "nan_policy", "batch_size", "checkpoint_interval")
# pipeline param -> the values layerwise/core/schema.py allows
ALLOWED = {
    "dtype": tuple(schema.DTYPES),
    "device": schema.DEVICES,
    "token_selection": schema.TOKEN_SELECTIONS,
    "layout": schema.LAYOUTS,
    "nan_policy": schema.NAN_POLICIES,
}


def pipeline_params() -> dict[str, dict]:
    """Every parameter of nextflow_schema.json: name -> its JSON-schema entry."""
    doc = json.loads((ROOT / "nextflow_schema.json").read_text(encoding="utf-8"))
    params: dict[str, dict] = {}
    for group in doc.get("$defs", doc.get("definitions", {})).values():
        params.update(group.get("properties", {}))
    params.update(doc.get("properties", {}))
    return params


def unit_config_defaults() -> dict:
    return {f.name: f.default for f in dataclasses.fields(UnitConfig) if f.default is not dataclasses.MISSING}


def load_script(name: str):
    # bin/layerwise-<command> runs layerwise/commands/<command>.py
    return importlib.import_module("layerwise.commands." + name.removeprefix("layerwise-").replace("-", "_"))


@pytest.mark.parametrize("param", EXTRACTION_PARAMS)
def test_pipeline_schema_default_is_the_unit_config_default(param):
    params, defaults = pipeline_params(), unit_config_defaults()
    assert param in params, f"nextflow_schema.json has no parameter {param}"
    assert param in defaults, f"UnitConfig has no default for {param}"
    assert params[param].get("default") == defaults[param], (
        f"--{param}: nextflow_schema.json says {params[param].get('default')!r}, UnitConfig {defaults[param]!r}")


@pytest.mark.parametrize("param", sorted(ALLOWED))
def test_pipeline_schema_enum_is_the_allowed_values(param):
    enum = pipeline_params()[param].get("enum")
    assert enum is not None, f"nextflow_schema.json gives --{param} no enum"
    assert tuple(enum) == tuple(ALLOWED[param])


def test_every_allowed_value_owner_is_checked():
    # the defaults of the enumerated options are allowed values themselves
    defaults = unit_config_defaults()
    for param, values in ALLOWED.items():
        assert defaults[param] in values, param


def test_layerwise_extract_takes_its_defaults_from_unit_config(monkeypatch):
    for var in ("LAYERWISE_BATCH_SIZE", "LAYERWISE_CHECKPOINT_INTERVAL"):
        monkeypatch.delenv(var, raising=False)
    parser = load_script("layerwise-extract").build_parser()
    args = vars(parser.parse_args(["--samplesheet", "s.csv", "--model", "m", "--language", "english",
                                   "--out-dir", "out"]))
    defaults = unit_config_defaults()
    assert {k: args[k] for k in defaults} == defaults
    # the environment still overrides the execution-only settings
    monkeypatch.setenv("LAYERWISE_BATCH_SIZE", "7")
    parser = load_script("layerwise-extract").build_parser()
    assert parser.parse_args(["--samplesheet", "s", "--model", "m", "--language", "e", "--out-dir", "o"]).batch_size == 7
    # every UnitConfig field is an option of the script (so argparse -> UnitConfig(**args) stays complete)
    assert set(args) == {f.name for f in dataclasses.fields(UnitConfig)}


def test_plan_records_read_what_the_planner_writes(tmp_path):
    from layerwise.preflight.plan import MODEL_KEYS, make_plan

    assert contract.PLAN_MODEL_KEYS == MODEL_KEYS
    df = pd.DataFrame({"row": range(5), "sample_id": [f"s{i}" for i in range(5)], "image": ["x.png"] * 5,
                       "gender": ["male"] * 5, "caption_english": ["a"] * 5, "caption_arabic": ["b"] * 5})
    info = {"id": "m", "revision": "r", "num_layers": 6, "hidden_size": 8, "model_type": "gemma3",
            "fingerprint": "sha256:x"}
    plan = make_plan(df, info, "all", "english,arabic", layer_groups="2", samples_per_task=2)
    record = contract.Plan.from_dict(json.loads(json.dumps(plan)))
    assert record.to_dict() == plan
    assert [u.id for u in record.units] == [u["id"] for u in plan["units"]]
    assert [s.bounds for s in record.shards] == [(0, 2), (2, 4), (4, 5)]
    broken = json.loads(json.dumps(plan))
    del broken["units"][0]["sheet"]
    with pytest.raises(Exception, match="sheet"):
        contract.Plan.from_dict(broken)


def test_unit_summary_record_lists_every_key_once():
    names = [f.name for f in dataclasses.fields(contract.UnitSummary)]
    assert len(names) == len(set(names))
    totalled = set(contract.summed_keys(contract.UnitSummary)) | set(contract.peak_keys(contract.UnitSummary))
    assert totalled <= set(names)
    for rate, parts in contract.RATES.items():
        assert set(parts) <= set(contract.summed_keys(contract.UnitSummary)), rate


# -- atomic writes: one implementation (layerwise/core/atomic.py) -----------------------------------------
# The most os.replace calls a module outside atomic.py may hold: moves of complete files, not writes.
RENAMES_NOT_WRITES = {
    "extract.py": 1,    # adopt_checkpoint: moves a failed attempt's partial files into this attempt's folder
    "publish.py": 1,    # supersede_stale: moves an earlier run's files into superseded/
    "plan.py": 1,       # write_plan: its own temporary file (not yet on layerwise.core.atomic)
}


def test_top_level_modules_write_atomically_through_one_helper():
    import re

    for path in sorted((ROOT / "layerwise").glob("*.py")):
        if path.name == "atomic.py":
            continue
        text = path.read_text(encoding="utf-8")
        assert len(re.findall(r"\bos\.replace\(", text)) <= RENAMES_NOT_WRITES.get(path.name, 0), path.name
        # fsync only in the streaming layer-file writer (its checkpoints) and the lock file
        assert "os.fsync(" not in text or path.name in ("ptfile.py", "locks.py"), path.name


def test_atomic_write_replaces_whole_files_and_leaves_nothing_behind(tmp_path, monkeypatch):
    import os

    from layerwise.core import atomic

    target = tmp_path / "sub" / "a.json"
    atomic.atomic_write_json(target, {"x": 1})
    assert json.loads(target.read_text()) == {"x": 1} and target.read_text().endswith("}\n")
    synced = []
    monkeypatch.setattr(atomic, "fsync_dir", lambda d: synced.append(Path(d)))
    atomic.atomic_write_text(target, "new")
    assert target.read_text() == "new" and synced == [target.parent.resolve()]

    def broken(_src, _dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError):
        atomic.atomic_write_bytes(target, b"half")
    assert target.read_text() == "new"                       # the old complete file, never a part
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.json"]
    assert atomic.temp_path(target).name == f".a.json.tmp-{os.getpid()}"


def test_samplesheet_schema_genders_are_schema_genders_in_any_case():
    """assets/schema_input.json (for users and nf-schema) lists layerwise.core.schema.GENDERS, in the cases PREFLIGHT accepts."""
    from layerwise.core import schema

    spec = json.loads((ROOT / "assets" / "schema_input.json").read_text())
    enum = spec["items"]["properties"]["gender"]["enum"]
    assert set(enum) == {v for g in schema.GENDERS for v in (g, g.title(), g.upper())}
    assert spec["items"]["properties"]["gender"]["errorMessage"].endswith(", ".join(schema.GENDERS))
