"""Publishing a run into --outdir: at any moment it holds one run's complete, verified result, or
says plainly that it does not.

`publish_run` is the pipeline's last step (PUBLISH_RESULTS). In order:

1. checks that the outdir lock (`.layerwise.lock`, taken by the Nextflow head at start) is this
   run's, and marks `extraction_metadata.json` "incomplete" while it works;
2. places every per-(layer, language) file under `layer_checkpoints/`: a single-shard file is
   hard-linked from the task that wrote it (no byte is copied; it survives `rm -rf work/`, and it
   is a complete file, not a symlink), falling back to a copy across file systems or with
   `--publish_dir_mode copy`; several shards are merged straight into place. Every file appears
   under its final name atomically (temporary name, then rename);
3. optionally writes the combined all-layer file per language (a copy of every byte: off by
   default; `loader.open_layers` opens all layers at once without it);
4. moves files of earlier runs that are not part of this result into `superseded/<time>/`;
5. validates the files as they now are in the outdir (checksums against what their writers
   recorded, shapes, samples, values) and writes the metadata, Parquet tables and report;
6. moves aside every stage folder (sae/, analysis/, intervention/) that was not computed from exactly the
   files just published (its record `<stage>/inputs.json`, layerwise.core.provenance), whatever stages
   this run enables: the outdir never holds SAEs or an analysis of other data beside these layer files.
   `extraction_metadata.json` lists every published file with its sha256; on failure it says
   FAILED and lists what is wrong.
"""
from __future__ import annotations

import datetime as _dt
import errno
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from layerwise.core import schema
from layerwise.core.atomic import atomic_write_json, fsync_file, replace_durably, temp_path
from layerwise.core.errors import LayerwiseError
from layerwise.core.outdir import (
    LAYER_DIR,
    LOCK_FILE,
    METADATA_JSON,
    PIPELINE_INFO,
    PREVIOUS_METADATA,
    STATUS_INCOMPLETE,
    SUPERSEDED_DIR,
)
from layerwise.core.provenance import foreign_stage_folders, sha256_file
from layerwise.publish.merge import combine_layers, merge_shards
from layerwise.publish.validation.tokens import unit_tokens_tables

PUBLISH_MODES = ("link", "copy")
# Result paths this pipeline owns in an outdir (anything else there is left alone).
MANAGED_GLOBS = (f"{LAYER_DIR}/*", "activations_*_all_layers.pt", "metadata/*.parquet", "validation_report.html",
                 f"{PIPELINE_INFO}/plan.json", f"{PIPELINE_INFO}/samplesheet.valid.csv")


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def place(src: Path, dst: Path, mode: str) -> str:
    """Put `src` at `dst` atomically: a hard link ("linked"), else a copy ("copied"); "kept" if already there."""
    src, dst = Path(os.path.realpath(src)), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if mode == "link" and dst.exists() and os.path.samefile(src, dst):
        return "kept"
    tmp = temp_path(dst)
    tmp.unlink(missing_ok=True)
    how = "copied"
    try:
        if mode == "link":
            try:
                os.link(src, tmp)
                how = "linked"
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
                    raise
                print(f"layerwise: cannot hard-link {src.name} into {dst.parent} ({exc.strerror}): copying",
                      file=sys.stderr)
        if how == "copied":
            shutil.copyfile(src, tmp)
            fsync_file(tmp)
        replace_durably(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return how


def check_lock(outdir: Path, run_id: str | None) -> None:
    """The outdir must be locked by this run (the Nextflow head takes the lock before any task)."""
    if run_id is None:
        return
    lock = outdir / LOCK_FILE
    try:
        owner = json.loads(lock.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise LayerwiseError(f"--outdir {outdir}: the lock {lock} of this run is missing; another run may be "
                             "writing here. Nothing was published.") from None
    if owner.get("session") != run_id:
        raise LayerwiseError(f"--outdir {outdir} is locked by another run ({owner.get('run_name')}, started "
                             f"{owner.get('started')} on {owner.get('host')}); nothing was published.")


def mark_incomplete(outdir: Path, run_name: str | None, reason: str) -> None:
    """Move a finished run's metadata aside and say that the outdir is being (re)written."""
    meta = outdir / METADATA_JSON
    try:
        old = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        old = None
    if old and old.get("status") != STATUS_INCOMPLETE:
        atomic_write_json(outdir / PREVIOUS_METADATA, old)
    atomic_write_json(meta, {"status": STATUS_INCOMPLETE, "run_name": run_name, "since": _now(), "reason": reason})


def previous_records(outdir: Path) -> dict[str, dict]:
    """{relative path: record} of the last finished run's published files (for reusing merged files)."""
    try:
        old = json.loads((outdir / PREVIOUS_METADATA).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {r["path"]: r for r in old.get("published", []) if isinstance(r, dict) and "path" in r}


def read_units(plan: dict, unit_dirs: list[Path]) -> list[dict]:
    """Each planned unit's summary (its layer files, their checksums), by unit id."""
    by_name = {Path(d).name: Path(d) for d in unit_dirs}
    units = []
    for unit in plan["units"]:
        folder = by_name.get(unit["id"])
        if folder is None:
            raise LayerwiseError(f"no output of extraction unit {unit['id']} was given to publish")
        try:
            summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise LayerwiseError(f"{folder}/summary.json: cannot read the unit's summary: {exc}") from None
        units.append({**unit, "dir": folder, "summary": summary,
                      "files": {f["file"]: f for f in summary.get("files", [])}})
    return units


def publish_stub(plan: dict, samplesheet: Path, unit_dirs: list[Path], outdir: Path,
                 plan_file: Path | None = None) -> dict[str, Any]:
    """For -stub-run: link the units' (empty) layer files into place and record them as a real run does,
    so that the stages after publishing see the same files; nothing is validated (status "stub")."""
    by_name = {Path(d).name: Path(d) for d in unit_dirs}
    published = []
    for language in plan["languages"]:
        for layer in plan["layers"]:
            name = schema.layer_filename(layer, language)
            unit = next((u for u in plan["units"] if u["language"] == language and layer in u["layers"]), None)
            if unit is None or unit["id"] not in by_name:
                raise LayerwiseError(f"{name}: no extraction unit of the plan wrote it")
            rel = f"{LAYER_DIR}/{name}"
            place(by_name[unit["id"]] / name, Path(outdir) / rel, "link")
            published.append({"path": rel, "layer": layer, "language": language, "how": "stub",
                              "sha256": sha256_file(Path(outdir) / rel)})
    for src, rel in ((plan_file, f"{PIPELINE_INFO}/plan.json"), (samplesheet, f"{PIPELINE_INFO}/samplesheet.valid.csv")):
        if src is not None:
            place(src, Path(outdir) / rel, "copy")
            published.append({"path": rel, "how": "copied", "sha256": sha256_file(Path(outdir) / rel)})
    metadata = {"status": "stub", "published": published}
    atomic_write_json(Path(outdir) / METADATA_JSON, metadata)
    return metadata


def _reusable(target: Path, record: dict | None, sources: list[str]) -> bool:
    return bool(record and record.get("sources") == sources and target.is_file()
                and target.stat().st_size == record.get("bytes") and sha256_file(target) == record.get("sha256"))


def publish_run(plan: dict, samplesheet: Path, unit_dirs: list[Path], outdir: Path, *, mode: str = "link",
                combined: bool = False, run_id: str | None = None, run_name: str | None = None,
                plan_file: Path | None = None, rewrites: tuple[str, ...] = ()) -> dict[str, Any]:
    """`rewrites`: the stage folders this run writes again (their own publishing replaces them)."""
    from layerwise.publish.validate import validate

    if mode not in PUBLISH_MODES:
        raise LayerwiseError(f"--publish_dir_mode {mode!r}: use one of {', '.join(PUBLISH_MODES)} (results must be "
                             "complete files that survive cleaning work/: not symlinks, not moved out of the cache)")
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    check_lock(outdir, run_id)
    mark_incomplete(outdir, run_name, "a run is publishing into this folder, or one failed while doing so")
    previous = previous_records(outdir)
    units = read_units(plan, unit_dirs)

    published: list[dict[str, Any]] = []   # every result file: path, bytes, sha256, how, sources
    expected: dict[str, str] = {}          # layer file name -> sha256 its writer recorded
    targets: list[Path] = []
    for language in plan["languages"]:
        for layer in plan["layers"]:
            name = schema.layer_filename(layer, language)
            parts = sorted((u for u in units if u["language"] == language and layer in u["layers"]),
                           key=lambda u: u["shard"])
            records = [u["files"].get(name) for u in parts]
            if not parts or any(r is None for r in records):
                raise LayerwiseError(f"{name}: no extraction unit recorded it (units {[u['id'] for u in parts]})")
            rel = f"{LAYER_DIR}/{name}"
            target = outdir / rel
            sources = [r["sha256"] for r in records]
            if len(parts) == 1:
                how = place(parts[0]["dir"] / name, target, mode)
                sha = records[0]["sha256"]
            elif _reusable(target, previous.get(rel), sources):
                how, sha = "kept", previous[rel]["sha256"]
            else:
                tmp_dir = outdir / LAYER_DIR / f".merge-{os.getpid()}"
                tmp_dir.mkdir(parents=True, exist_ok=True)
                try:
                    info = merge_shards([u["dir"] / name for u in parts], tmp_dir / name, layer, language)
                    replace_durably(tmp_dir / name, target)
                finally:
                    shutil.rmtree(tmp_dir, ignore_errors=True)
                how, sha = "merged", info["sha256"]
            expected[name] = sha
            targets.append(target)
            published.append({"path": rel, "layer": layer, "language": language, "how": how, "sha256": sha,
                              "sources": sources, "source_dirs": [str(os.path.realpath(u["dir"])) for u in parts]})

    if combined:
        for language in plan["languages"]:
            rel = schema.combined_filename(language)
            layer_recs = [p for p in published if p["language"] == language]
            sources = [p["sha256"] for p in layer_recs]
            target = outdir / rel
            if _reusable(target, previous.get(rel), sources):
                how, sha = "kept", previous[rel]["sha256"]
            else:
                tmp = temp_path(outdir / rel)
                try:
                    info = combine_layers([outdir / p["path"] for p in layer_recs], tmp, language)
                    replace_durably(tmp, target)
                finally:
                    tmp.unlink(missing_ok=True)
                how, sha = "combined", info["sha256"]
            published.append({"path": rel, "language": language, "how": how, "sha256": sha, "sources": sources})

    for src, rel in ((plan_file, f"{PIPELINE_INFO}/plan.json"), (samplesheet, f"{PIPELINE_INFO}/samplesheet.valid.csv")):
        if src is not None:
            place(src, outdir / rel, "copy")
            published.append({"path": rel, "how": "copied", "sha256": sha256_file(outdir / rel)})

    # the units' token tables, concatenated into metadata/tokens.parquet by validation (None: no unit wrote one)
    tokens = unit_tokens_tables(plan, [u["dir"] for u in units])
    if tokens is None:
        print(f"layerwise: no extraction unit wrote {schema.UNIT_TOKENS_FILE}: {schema.TOKENS_PARQUET} is not written",
              file=sys.stderr)
    report_paths = _report_paths(tokens is not None)
    superseded = supersede_stale(outdir, {p["path"] for p in published} | set(report_paths))

    summaries = [u["dir"] / "summary.json" for u in units]
    try:
        metadata = validate(plan, samplesheet, targets, summaries, outdir, expected_sha256=expected, write_json=False,
                            tokens=tokens)
    except LayerwiseError as exc:
        damaged = _damaged_sources(exc, published)
        failed = {"status": "FAILED", "run_name": run_name, "finished_utc": _now(), "error": str(exc),
                  "published": _with_sizes(outdir, published), "superseded": superseded,
                  "removed_damaged_work_copies": damaged}
        atomic_write_json(outdir / METADATA_JSON, failed)
        if damaged:
            raise LayerwiseError(f"{exc}\nThe damaged files' work copies were removed too (hard links share the bytes): "
                                 "run again with -resume to re-extract them.") from None
        raise
    for rel in report_paths:
        if (outdir / rel).is_file():
            published.append({"path": rel, "how": "written", "sha256": sha256_file(outdir / rel)})
    superseded += supersede_foreign_stages(outdir, {p["path"]: p["sha256"] for p in published}, rewrites)
    metadata.update(run_name=run_name, published=_with_sizes(outdir, published), superseded=superseded,
                    publish_mode=mode)
    atomic_write_json(outdir / METADATA_JSON, metadata)
    return metadata


def _report_paths(tokens: bool = True) -> list[str]:
    from layerwise.publish.validate import LAYERS_PARQUET, NORMS_PARQUET, REPORT_HTML, SAMPLES_PARQUET

    return [SAMPLES_PARQUET, LAYERS_PARQUET, NORMS_PARQUET] + ([schema.TOKENS_PARQUET] if tokens else []) + [REPORT_HTML]


def _with_sizes(outdir: Path, published: list[dict]) -> list[dict]:
    out = []
    for p in published:
        f = outdir / p["path"]
        st = f.stat() if f.is_file() else None
        out.append({**p, "bytes": st.st_size if st else None, "mtime_ns": st.st_mtime_ns if st else None})
    return out


def _damaged_sources(exc: LayerwiseError, published: list[dict]) -> list[str]:
    """Hard-linked files whose checksum failed: their work copy is the same damaged inode; remove it so
    that -resume re-runs the unit that wrote it."""
    text = str(exc)
    removed = []
    for p in published:
        if p.get("how") in ("linked", "kept") and f"{Path(p['path']).name}: checksum" in text:
            for d in p.get("source_dirs", []):
                shutil.rmtree(d, ignore_errors=True)
                removed.append(d)
    return removed


def supersede_foreign_stages(outdir: Path, published: dict[str, str], rewrites: tuple[str, ...] = ()) -> list[str]:
    """Move stage folders that do not belong to the files just published into superseded/<time>/."""
    foreign = foreign_stage_folders(outdir, published, skip=tuple(rewrites))
    if not foreign:
        return []
    stamp = _dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    moved = []
    for stage, why in foreign:
        dest = outdir / SUPERSEDED_DIR / stamp / stage
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(outdir / stage, dest)
        moved.append(f"{stage}/")
        print(f"layerwise: {stage}/ does not belong to the layer files of this run ({why}): moved to "
              f"{dest.relative_to(outdir)}", file=sys.stderr)
    return moved


def supersede_stale(outdir: Path, keep: set[str]) -> list[str]:
    """Move managed files that are not part of this result into superseded/<time>/ (never mixed, never lost)."""
    stamp = _dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    moved = []
    for pattern in MANAGED_GLOBS:
        for f in sorted(outdir.glob(pattern)):
            rel = f.relative_to(outdir).as_posix()
            if rel in keep or not f.is_file():
                continue
            if f.name.startswith(".") and ".tmp-" in f.name:   # leftovers of a killed publish
                f.unlink(missing_ok=True)
                continue
            dest = outdir / SUPERSEDED_DIR / stamp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(f, dest)
            moved.append(rel)
    if moved:
        print(f"layerwise: moved {len(moved)} file(s) of an earlier run to {outdir / SUPERSEDED_DIR / stamp}",
              file=sys.stderr)
    return moved
