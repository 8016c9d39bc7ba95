"""Stage folders belong to the layer files they were computed from (layerwise.core.provenance): the record
`<stage>/inputs.json`, and PUBLISH_RESULTS' check that moves aside every stage folder of other data, whatever
stages the later run enables. (Through the engine: tests/integration/test_pipeline.py, the caption-edit run.)"""
from __future__ import annotations

import json

import pytest

from layerwise.commands import record_inputs
from layerwise.core.errors import LayerwiseError
from layerwise.core.provenance import (
    SAMPLESHEET_PATH,
    foreign_stage_folders,
    read_record,
    sha256_file,
    write_record,
)
from layerwise.publish.outdir import supersede_foreign_stages

LAYERS = {f"layer_checkpoints/layer_{i}_english.pt": f"{i}".ljust(64, "a") for i in range(3)}
SHEET = "c" * 64


def published(**changes):
    return {**LAYERS, SAMPLESHEET_PATH: SHEET, **changes}


def stage(out, name, inputs, body="result"):
    folder = out / name
    folder.mkdir(parents=True)
    (folder / "table.parquet").write_text(body)
    write_record(folder, name, inputs)
    return folder


def test_matching_records_belong(tmp_path):
    stage(tmp_path, "sae", dict(LAYERS))
    sae_sha = sha256_file(tmp_path / "sae" / "inputs.json")
    stage(tmp_path, "analysis", {**LAYERS, SAMPLESHEET_PATH: SHEET, "sae/inputs.json": sae_sha})
    stage(tmp_path, "intervention", {**LAYERS, "sae/inputs.json": sae_sha})
    assert foreign_stage_folders(tmp_path, published()) == []


def test_other_layer_files_a_missing_record_and_a_dependent_stage_are_foreign(tmp_path):
    stage(tmp_path, "sae", dict(LAYERS))
    sae_sha = sha256_file(tmp_path / "sae" / "inputs.json")
    stage(tmp_path, "analysis", dict(LAYERS))
    stage(tmp_path, "intervention", {**LAYERS, "sae/inputs.json": sae_sha})
    changed = "layer_checkpoints/layer_1_english.pt"
    foreign = dict(foreign_stage_folders(tmp_path, published(**{changed: "f" * 64})))
    # every stage was computed from the old layer 1
    assert set(foreign) == {"sae", "analysis", "intervention"} and changed in foreign["sae"]
    # a layer more (or fewer) than the record: other data too
    more = published(**{"layer_checkpoints/layer_3_english.pt": "d" * 64})
    assert {s for s, _ in foreign_stage_folders(tmp_path, more)} == {"sae", "analysis", "intervention"}
    # the SAEs are this run's again, the analysis too; an intervention on SAEs that are not: foreign
    (tmp_path / "sae" / "inputs.json").unlink()
    foreign = dict(foreign_stage_folders(tmp_path, published()))
    assert set(foreign) == {"sae", "intervention"}
    assert "no inputs.json" in foreign["sae"] and "sae/inputs.json is gone" in foreign["intervention"]


def test_a_changed_samplesheet_makes_the_analysis_foreign(tmp_path):
    stage(tmp_path, "analysis", {**LAYERS, SAMPLESHEET_PATH: SHEET})
    assert foreign_stage_folders(tmp_path, published()) == []
    assert [s for s, _ in foreign_stage_folders(tmp_path, published(**{SAMPLESHEET_PATH: "e" * 64}))] == ["analysis"]


def test_stages_this_run_rewrites_are_not_checked(tmp_path):
    stage(tmp_path, "sae", {"layer_checkpoints/layer_9_english.pt": "9" * 64})
    assert foreign_stage_folders(tmp_path, published(), skip=("sae",)) == []


def test_supersede_moves_foreign_folders_whole_and_keeps_the_rest(tmp_path):
    stage(tmp_path, "sae", dict(LAYERS))
    stage(tmp_path, "analysis", {"layer_checkpoints/layer_0_arabic.pt": "0" * 64}, body="other data")
    moved = supersede_foreign_stages(tmp_path, published())
    assert moved == ["analysis/"]
    assert (tmp_path / "sae" / "table.parquet").is_file() and not (tmp_path / "analysis").exists()
    kept = list(tmp_path.glob("superseded/*/analysis/table.parquet"))
    assert len(kept) == 1 and kept[0].read_text() == "other data"      # moved, not lost


def test_the_record_is_deterministic_and_names_a_layer_file(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = write_record(tmp_path / "a", "analysis", published())
    b = write_record(tmp_path / "b", "analysis", dict(reversed(published().items())))
    assert a.read_bytes() == b.read_bytes()
    with pytest.raises(LayerwiseError, match="names no layer file"):
        write_record(tmp_path / "a", "analysis", {SAMPLESHEET_PATH: SHEET})
    with pytest.raises(LayerwiseError, match="unknown stage folder"):
        write_record(tmp_path / "a", "report", published())


def test_record_inputs_command_maps_the_workflow_checksums(tmp_path, capsys):
    checksums = tmp_path / "checksums.json"
    checksums.write_text(json.dumps({**LAYERS, "samplesheet": SHEET}))
    other = tmp_path / "sae_record.json"
    other.write_text('{"stage": "sae"}')
    out = tmp_path / "analysis"
    out.mkdir()
    assert record_inputs.main(["--stage", "analysis", "--checksums", str(checksums), "--out-dir", str(out),
                               "--read", f"sae/inputs.json={other}"]) == 0
    record = read_record(out)
    assert record["inputs"] == {**LAYERS, SAMPLESHEET_PATH: SHEET, "sae/inputs.json": sha256_file(other)}


# -- the head's side (lib/LayerwiseOutdir.groovy, lib/LayerwiseUtils.groovy), in one JVM --------------------
HEAD = """
def gcl = new GroovyClassLoader(); gcl.addClasspath(args[0])
def O = gcl.loadClass('LayerwiseOutdir'); def U = gcl.loadClass('LayerwiseUtils')
O.init(java.nio.file.Paths.get(args[1]))
def out = java.nio.file.Paths.get(args[2])
def saes = U.publishedSaes(out)
def dropped = O.dropUnchanged(out, 'stamp', ['analysis', 'intervention', 'sae/metrics.parquet', 'sae/report.html'])
println groovy.json.JsonOutput.toJson([dropped: dropped, folders: saes.folders.collect { it.fileName.toString() },
                                        record: saes.record?.toString()])
"""


def test_the_head_drops_unchanged_superseded_copies_and_lists_recorded_saes(tmp_path):
    import os
    import subprocess

    from tests.support.engine import ROOT, groovy_command

    out, old = tmp_path / "results", tmp_path / "results" / "superseded" / "stamp"
    for name, text in (("analysis/report.html", "same"), ("analysis/t/probes.parquet", "same table"),
                       ("intervention/summary.parquet", "new"), ("sae/metrics.parquet", "m")):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    (old / "analysis" / "t").mkdir(parents=True)
    os.link(out / "analysis" / "report.html", old / "analysis" / "report.html")             # the same inode
    (old / "analysis" / "t" / "probes.parquet").write_text("same table")                    # the same bytes
    (old / "intervention").mkdir()
    (old / "intervention" / "summary.parquet").write_text("old")                           # changed: kept
    (old / "sae").mkdir()
    (old / "sae" / "metrics.parquet").write_text("m")
    for name in ("layer_10_arabic", "layer_2_english", "layer_2_arabic", "notes"):
        (out / "sae" / name).mkdir()
    script = tmp_path / "head.groovy"
    script.write_text(HEAD)
    run = subprocess.run(groovy_command(script, ROOT, out), capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert sorted(got["dropped"]) == ["analysis", "sae/metrics.parquet"]
    assert not (old / "analysis").exists() and not (old / "sae").exists()        # empty folders go too
    assert (old / "intervention" / "summary.parquet").read_text() == "old"
    # no record: no published SAEs (an unfinished sae/ is never used)
    assert got["folders"] == [] and got["record"] is None
    (out / "sae" / "inputs.json").write_text("{}")
    run = subprocess.run(groovy_command(script, ROOT, out), capture_output=True, text=True, timeout=120)
    got = json.loads(run.stdout.strip().splitlines()[-1])
    # by layer, then language, as SAE_TRAINING emits its SAEs (a pooled SAE's language is "pooled")
    assert got["folders"] == ["layer_2_arabic", "layer_2_english", "layer_10_arabic"]
    assert got["record"] == str(out / "sae" / "inputs.json")
