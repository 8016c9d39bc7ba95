"""publish_run: unit folders -> --outdir (hard links, merges), supersede stale files, validate in place.

Unit folders are made by the test factory as EXTRACT writes them (layer files streamed through
LayerFileStream + summary.json with each file's writer-recorded sha256). Expected contents come from
the FakeSamples; checksums are recomputed here with hashlib; the set of published files is compared
with a walk of the outdir, not with publish's own globs.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from layerwise.core import schema  # noqa: E402
from layerwise.core.errors import LayerwiseError  # noqa: E402
from layerwise.layerfile.store import sample_rows  # noqa: E402
from layerwise.publish.outdir import publish_run  # noqa: E402
from tests.support import layer_file_factory as F  # noqa: E402
from tests.support.command_runner import run_in_process

REPO = F.REPO
N = 7
METADATA = "extraction_metadata.json"
# What the outdir may hold besides the published files: the metadata, the outdir lock, the previous metadata.
BOOKKEEPING = {METADATA, ".layerwise.lock", "pipeline_info/extraction_metadata.previous.json"}


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class Run:
    """A planned run: plan.json, samplesheet.valid.csv and one folder per unit under `work`."""

    def __init__(self, root: Path, layers=(0, 3), languages=("english",), shard_size=N, groups=None, work="work"):
        self.root = Path(root)
        self.layers, self.languages = list(layers), list(languages)
        self.ids = F.sample_ids(N)
        self.plan = F.make_plan(self.layers, self.languages, N, shard_size, layer_groups=groups)
        self.samplesheet = F.write_samplesheet(self.root / "samplesheet.valid.csv", self.ids, self.languages)
        self.plan_file = self.root / "plan.json"
        self.plan_file.write_text(json.dumps(self.plan))
        self.work = self.root / work
        self.unit_dirs = F.write_units(self.work, self.plan, self.ids)
        self.outdir = self.root / "results"

    def publish(self, **kw) -> dict:
        kw.setdefault("plan_file", self.plan_file)
        return publish_run(self.plan, self.samplesheet, self.unit_dirs, self.outdir, **kw)

    def out(self, layer, language="english") -> Path:
        return self.outdir / "layer_checkpoints" / schema.layer_filename(layer, language)

    def unit_file(self, layer, language="english", shard=0) -> Path:
        unit = next(u for u in self.plan["units"] if layer in u["layers"] and u["language"] == language
                    and u["shard"] == shard)
        return self.work / unit["id"] / schema.layer_filename(layer, language)

    def metadata(self) -> dict:
        return json.loads((self.outdir / METADATA).read_text())


def result_files(outdir: Path) -> set[str]:
    """Every file under the outdir that is not bookkeeping or superseded (hidden leftovers included)."""
    out = set()
    for p in outdir.rglob("*"):
        rel = p.relative_to(outdir).as_posix()
        if p.is_file() and rel not in BOOKKEEPING and not rel.startswith("superseded/"):
            out.add(rel)
    return out


def assert_published_exactly(outdir: Path, meta: dict) -> None:
    """`published` lists exactly the files present, each with its real sha256, size and mtime."""
    records = {r["path"]: r for r in meta["published"]}
    assert len(records) == len(meta["published"])
    assert set(records) == result_files(outdir)
    for rel, r in records.items():
        st = (outdir / rel).stat()
        assert r["sha256"] == sha256(outdir / rel), rel
        assert r["bytes"] == st.st_size and r["mtime_ns"] == st.st_mtime_ns, rel


def assert_holds(path: Path, layer: int, language: str, expected: list) -> None:
    d = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    assert d["layer"] == layer and d["language"] == language
    assert d["sample_ids"] == [s.sample_id for s in expected]
    assert d["genders"] == [s.gender for s in expected]
    for i, s in enumerate(expected):
        rows, ids = sample_rows(d, i)
        kinds = sample_rows({**d, "activations": d["token_kinds"]}, i)[0]
        assert torch.equal(rows, s.rows) and torch.equal(ids, s.token_ids) and torch.equal(kinds, s.token_kinds)


def layer_records(meta: dict) -> dict[str, dict]:
    return {r["path"]: r for r in meta["published"] if r["path"].startswith("layer_checkpoints/")}


# -- placing ----------------------------------------------------------------------------------
def test_single_shard_files_are_hard_links_that_survive_the_work_dir(tmp_path):
    run = Run(tmp_path, layers=(0, 3, 5), languages=("english", "arabic"), groups=[[0, 3], [5]])
    meta = run.publish(run_name="tiny_turing")
    assert meta["status"] == "passed" and meta["publish_mode"] == "link" and meta["run_name"] == "tiny_turing"
    assert run.metadata() == json.loads(json.dumps(meta))
    summaries = {d.name: json.loads((d / "summary.json").read_text()) for d in run.unit_dirs}
    recs = layer_records(meta)
    assert len(recs) == 6
    for layer in (0, 3, 5):
        for language in ("english", "arabic"):
            out, src = run.out(layer, language), run.unit_file(layer, language)
            assert os.path.samefile(out, src) and out.stat().st_nlink == 2 and not out.is_symlink()
            rec = recs[f"layer_checkpoints/{out.name}"]
            recorded = next(f["sha256"] for f in summaries[src.parent.name]["files"] if f["file"] == out.name)
            assert rec["how"] == "linked" and rec["sha256"] == recorded == sha256(out)
            assert rec["sources"] == [recorded] and rec["source_dirs"] == [os.path.realpath(src.parent)]
    assert_published_exactly(run.outdir, meta)
    assert {r["path"] for r in meta["published"]} >= {"pipeline_info/plan.json", "pipeline_info/samplesheet.valid.csv",
                                                     "metadata/samples.parquet", "validation_report.html"}
    assert next(c for c in meta["checks"] if c["name"] == "checksums")["passed"]

    before = {p: sha256(p) for p in (run.outdir / "layer_checkpoints").iterdir()}
    shutil.rmtree(run.work)  # `rm -rf work/`
    for path, digest in before.items():
        assert path.stat().st_nlink == 1 and sha256(path) == digest
    for layer in (0, 3, 5):
        for language in ("english", "arabic"):
            assert_holds(run.out(layer, language), layer, language, F.expected_samples(layer, language, run.ids))


def test_copy_mode_gives_independent_files(tmp_path):
    run = Run(tmp_path)
    meta = run.publish(mode="copy")
    assert meta["status"] == "passed" and meta["publish_mode"] == "copy"
    for layer in run.layers:
        out, src = run.out(layer), run.unit_file(layer)
        assert not os.path.samefile(out, src) and out.stat().st_nlink == 1
        assert sha256(out) == sha256(src)
        assert layer_records(meta)[f"layer_checkpoints/{out.name}"]["how"] == "copied"
    digest = sha256(run.out(0))
    with open(run.unit_file(0), "r+b") as fh:  # damage in work/ does not reach the published copy
        fh.seek(100)
        fh.write(b"\xff" * 8)
    assert sha256(run.out(0)) == digest
    assert_published_exactly(run.outdir, meta)


def test_switching_from_link_to_copy_mode_unshares_the_files(tmp_path):
    run = Run(tmp_path)
    run.publish()
    assert os.path.samefile(run.out(0), run.unit_file(0))
    run.publish(mode="copy")
    assert not os.path.samefile(run.out(0), run.unit_file(0))


def test_several_shards_are_merged_in_shard_order(tmp_path):
    run = Run(tmp_path, layers=(0, 3), languages=("english", "arabic"), shard_size=3)
    assert len(run.plan["shards"]) == 3
    run.unit_dirs = run.unit_dirs[::-1]  # the order Nextflow hands them over does not matter
    meta = run.publish()
    assert meta["status"] == "passed"
    recs = layer_records(meta)
    for layer in (0, 3):
        for language in ("english", "arabic"):
            out = run.out(layer, language)
            assert_holds(out, layer, language, F.expected_samples(layer, language, run.ids))
            rec = recs[f"layer_checkpoints/{out.name}"]
            assert rec["how"] == "merged" and rec["sha256"] == sha256(out) and out.stat().st_nlink == 1
            assert rec["sources"] == [sha256(run.unit_file(layer, language, shard=k)) for k in range(3)]
            assert len(rec["source_dirs"]) == 3
    assert sorted(p.name for p in (run.outdir / "layer_checkpoints").iterdir()) == sorted(
        schema.layer_filename(layer, lang) for layer in (0, 3) for lang in ("english", "arabic"))  # no .merge-* left
    assert_published_exactly(run.outdir, meta)


def test_merged_files_are_kept_while_their_sources_are_unchanged(tmp_path):
    run = Run(tmp_path, layers=(0, 3), shard_size=4)
    run.publish()
    inode = {layer: run.out(layer).stat().st_ino for layer in (0, 3)}
    meta = run.publish()
    recs = layer_records(meta)
    for layer in (0, 3):
        assert recs[f"layer_checkpoints/layer_{layer}_english.pt"]["how"] == "kept"
        assert run.out(layer).stat().st_ino == inode[layer]  # not rewritten
    assert_published_exactly(run.outdir, meta)

    # shard 1 re-extracted with other values: layer 0 and 3 are merged again from the new sources
    unit = run.plan["units"][1]
    assert unit["shard"] == 1
    new_dir = F.write_unit(tmp_path / "work2", unit, run.ids,
                           samples_for=lambda layer, lang, ids: F.make_samples(layer + 10, lang, ids))
    run.unit_dirs[1] = new_dir
    meta = run.publish()
    recs = layer_records(meta)
    for layer in (0, 3):
        rec = recs[f"layer_checkpoints/layer_{layer}_english.pt"]
        assert rec["how"] == "merged" and rec["sha256"] == sha256(run.out(layer))
        assert rec["sources"][1] == sha256(new_dir / f"layer_{layer}_english.pt")
        expected = (F.make_samples(layer, "english", run.ids[:4]) + F.make_samples(layer + 10, "english", run.ids[4:]))
        assert_holds(run.out(layer), layer, "english", expected)

    # a merged file damaged in the outdir is not kept: it is merged again (its sources are intact)
    with open(run.out(3), "r+b") as fh:
        fh.seek(200)
        fh.write(b"\x00\x01\x02\x03")
    meta = run.publish()
    assert meta["status"] == "passed"
    assert layer_records(meta)["layer_checkpoints/layer_3_english.pt"]["how"] == "merged"
    assert layer_records(meta)["layer_checkpoints/layer_0_english.pt"]["how"] == "kept"
    assert_published_exactly(run.outdir, meta)


def test_combined_files(tmp_path):
    run = Run(tmp_path, layers=(0, 3), shard_size=4)
    meta = run.publish(combined=True)
    rel = schema.combined_filename("english")
    rec = next(r for r in meta["published"] if r["path"] == rel)
    assert rec["how"] == "combined" and rec["sha256"] == sha256(run.outdir / rel)
    assert rec["sources"] == [sha256(run.out(0)), sha256(run.out(3))]
    d = torch.load(run.outdir / rel, weights_only=True, mmap=True)
    for layer in (0, 3):
        assert torch.equal(d["activations"][layer], torch.load(run.out(layer), weights_only=True)["activations"])
    assert_published_exactly(run.outdir, meta)
    meta = run.publish(combined=True)
    assert next(r for r in meta["published"] if r["path"] == rel)["how"] == "kept"
    # without --combined the file is no longer part of the result: superseded, not left mixed in
    meta = run.publish()
    assert rel not in {r["path"] for r in meta["published"]} and not (run.outdir / rel).exists()
    assert rel in meta["superseded"]
    assert_published_exactly(run.outdir, meta)


# -- a later run into the same outdir -----------------------------------------------------------
def test_fewer_layers_supersede_the_extra_files(tmp_path):
    first = Run(tmp_path / "a", layers=(0, 3, 5), languages=("english", "arabic"))
    first.outdir = tmp_path / "results"
    old = first.publish()
    old_sha = {r["path"]: r["sha256"] for r in old["published"]}
    # a leftover of a killed publish is cleaned, not published
    leftover = first.outdir / "layer_checkpoints" / ".layer_0_english.pt.tmp-12345"
    leftover.write_bytes(b"torn")

    second = Run(tmp_path / "b", layers=(0, 3), languages=("english",))
    second.outdir = first.outdir
    meta = second.publish()
    assert meta["status"] == "passed"
    extra = sorted(f"layer_checkpoints/{schema.layer_filename(layer, lang)}" for layer, lang in
                   [(5, "english"), (0, "arabic"), (3, "arabic"), (5, "arabic")])
    assert sorted(meta["superseded"]) == extra
    moved = list((first.outdir / "superseded").glob("*/layer_checkpoints/*.pt"))
    assert sorted(f"layer_checkpoints/{p.name}" for p in moved) == extra
    assert len({p.parent.parent for p in moved}) == 1  # one superseded/<time>/ folder
    for p in moved:  # moved whole, byte for byte
        assert sha256(p) == old_sha[f"layer_checkpoints/{p.name}"]
    assert not leftover.exists()
    assert sorted(p.name for p in (first.outdir / "layer_checkpoints").iterdir()) == [
        "layer_0_english.pt", "layer_3_english.pt"]
    assert_published_exactly(second.outdir, meta)
    for layer in (0, 3):
        assert os.path.samefile(second.out(layer), second.unit_file(layer))
    # the previous run's metadata is kept aside
    previous = json.loads((first.outdir / "pipeline_info/extraction_metadata.previous.json").read_text())
    assert previous["published"] == old["published"]
    assert meta["layers"] == [0, 3] and meta["languages"] == ["english"]


def test_damaged_linked_file_fails_the_next_publish(tmp_path):
    run = Run(tmp_path, layers=(0, 3))
    run.publish()
    good = sha256(run.out(3))
    with open(run.out(3), "r+b") as fh:  # damaged in place: the work copy is the same inode
        fh.seek(300)
        fh.write(b"\x7f" * 16)
    assert sha256(run.unit_file(3)) != good
    with pytest.raises(LayerwiseError) as err:
        run.publish()
    msg = str(err.value)
    line = next(ln for ln in msg.splitlines() if "[checksums]" in ln)
    assert "layer_3_english.pt" in line and good[:12] in line
    assert "layer_0_english.pt" not in msg
    meta = run.metadata()
    assert meta["status"] == "FAILED" and "layer_3_english.pt" in meta["error"] and "[checksums]" in meta["error"]
    # the work copy (same bytes) is removed, so that -resume re-extracts it
    unit_dir = os.path.realpath(run.work / run.plan["units"][0]["id"])
    assert meta["removed_damaged_work_copies"] == [unit_dir] and not Path(unit_dir).exists()
    assert "-resume" in msg


def test_truncated_linked_file_fails_the_next_publish(tmp_path):
    run = Run(tmp_path, layers=(0,))
    run.publish()
    size = run.out(0).stat().st_size
    os.truncate(run.out(0), size // 2)
    with pytest.raises(LayerwiseError, match="layer_0_english.pt") as err:
        run.publish()
    assert "[checksums] layer_0_english.pt" in str(err.value)
    assert run.metadata()["status"] == "FAILED"


def test_deleted_published_file_is_linked_again(tmp_path):
    run = Run(tmp_path, layers=(0, 3))
    run.publish()
    run.out(0).unlink()
    meta = run.publish()
    assert meta["status"] == "passed"
    recs = layer_records(meta)
    assert recs["layer_checkpoints/layer_0_english.pt"]["how"] == "linked"
    assert recs["layer_checkpoints/layer_3_english.pt"]["how"] == "kept"
    assert os.path.samefile(run.out(0), run.unit_file(0))
    assert_published_exactly(run.outdir, meta)


# -- refusals -------------------------------------------------------------------------------------
def snapshot(folder: Path) -> dict[str, tuple]:
    return {p.relative_to(folder).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns, sha256(p))
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_lock_of_another_session_refuses_before_writing_anything(tmp_path):
    run = Run(tmp_path, layers=(0,))
    run.outdir.mkdir()
    lock = run.outdir / ".layerwise.lock"
    lock.write_text(json.dumps({"session": "run-A", "run_name": "happy_hopper", "started": "2026-12-01T09:00:00Z",
                                "host": "head1"}))
    assert run.publish(run_id="run-A")["status"] == "passed"
    # another run took the outdir
    lock.write_text(json.dumps({"session": "run-B", "run_name": "angry_babbage", "started": "2026-12-01T10:00:00Z",
                                "host": "head2"}))
    before = snapshot(run.outdir)
    with pytest.raises(LayerwiseError, match="locked by another run") as err:
        run.publish(run_id="run-A")
    assert "angry_babbage" in str(err.value) and "head2" in str(err.value)
    assert snapshot(run.outdir) == before
    # no lock at all while a run id is given: refused too
    lock.unlink()
    before = snapshot(run.outdir)
    with pytest.raises(LayerwiseError, match="lock .* is missing"):
        run.publish(run_id="run-A")
    assert snapshot(run.outdir) == before


@pytest.mark.parametrize("mode", ["symlink", "move", "rellink"])
def test_bad_modes_are_refused(tmp_path, mode):
    run = Run(tmp_path, layers=(0,))
    with pytest.raises(LayerwiseError) as err:
        run.publish(mode=mode)
    msg = str(err.value)
    assert repr(mode) in msg and "link, copy" in msg
    assert not run.outdir.exists()
    assert run.unit_file(0).is_file()


def test_a_unit_missing_from_the_inputs_is_named(tmp_path):
    run = Run(tmp_path, layers=(0, 3), groups=[[0], [3]])
    run.unit_dirs = run.unit_dirs[:1]
    with pytest.raises(LayerwiseError, match=run.plan["units"][1]["id"]):
        run.publish()
    assert run.metadata()["status"] == "incomplete"


# -- the command-line script -------------------------------------------------------------------
def run_script(args, capsys) -> tuple[int, str, str]:
    """bin/layerwise-publish ARGS in-process, with bin/'s error handling (layerwise.core.cli.run_cli)."""
    return run_in_process("layerwise-publish", args, capsys)


def test_cli(tmp_path, capsys):
    assert (REPO / "bin" / "layerwise-publish").stat().st_mode & 0o111
    run = Run(tmp_path, layers=(0, 3), shard_size=4)
    args = ["--plan", run.plan_file, "--samplesheet", run.samplesheet, "--outdir", run.outdir, *run.unit_dirs]
    code, out, err = run_script(args, capsys)
    assert code == 0, err
    assert "published and validated 2 layer files" in out and "2 merged" in out
    assert run.metadata()["status"] == "passed"
    code, out, err = run_script(["--plan", tmp_path / "nope.json", *args[2:]], capsys)
    assert code == 2 and err.startswith("ERROR: ") and "nope.json" in err and "Traceback" not in err
    code, out, err = run_script(["--mode", "symlink", *args], capsys)
    assert code == 2 and "invalid choice: 'symlink'" in err
