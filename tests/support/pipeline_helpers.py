"""Helpers for tests that run the whole Nextflow pipeline in a subprocess.

Generic on purpose (any profile, any executor): `run_pipeline` starts `./nextflow run <repo>` with
its own launch, work and output directories; `start_pipeline` does the same in the background (for
tests that interrupt a run); `trace_rows` reads the execution trace; `output_digest` fingerprints
the published results that must be identical between two runs of the same inputs.

    from tests.support.pipeline_helpers import run_pipeline, trace_rows, output_digest

    run = run_pipeline(tmp_path, "--layers", "0-1", profile="test", timeout=600)
    assert run.returncode == 0, run.failure_message()
    rows = run.trace()                    # this run's trace file, one dict per task
    digest = output_digest(run.outdir)    # {relative name: sha256}
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
NEXTFLOW = ROOT / "nextflow"

TRACE_GLOB = "execution_trace_*.txt"
# Trace status values (Nextflow TraceRecord): COMPLETED / CACHED / FAILED / ABORTED / ...
DONE_STATUSES = ("COMPLETED", "CACHED")


# -- running -----------------------------------------------------------------------------------
@dataclass
class PipelineRun:
    """One `nextflow run`: command line, exit status, output, and where it wrote."""

    cmd: list[str]
    returncode: int | None
    stdout: str
    stderr: str
    launchdir: Path
    workdir: Path
    outdir: Path
    started: float                     # time.time() just before the launch
    seconds: float
    timed_out: bool = False
    process: subprocess.Popen | None = field(default=None, repr=False)
    trace_file: Path | None = None     # the trace file this run wrote (set when it has ended)

    @property
    def output(self) -> str:
        """stdout and stderr together (Nextflow prints task errors on stdout, its own on stderr)."""
        return self.stdout + "\n" + self.stderr

    @property
    def log_file(self) -> Path:
        return self.launchdir / ".nextflow.log"

    def log_text(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    def find_trace_file(self) -> Path | None:
        """The newest trace file in outdir/pipeline_info written since this run was launched."""
        return latest_trace_file(self.outdir, since=self.started)

    def trace(self) -> list[dict[str, str]]:
        """Rows of this run's trace file (read now: a running pipeline appends a row per finished task)."""
        path = self.trace_file or self.find_trace_file()
        return read_trace(path) if path else []

    def failure_message(self, tail: int = 60) -> str:
        """A readable account of the run for assertion messages."""
        lines = self.output.splitlines()[-tail:]
        log_tail = self.log_text().splitlines()[-tail:]
        return (f"command: {' '.join(self.cmd)}\nexit: {self.returncode}{' (timed out)' if self.timed_out else ''}"
                f" after {self.seconds:.0f} s\n--- output (last {tail} lines) ---\n" + "\n".join(lines)
                + f"\n--- {self.log_file} (last {tail} lines) ---\n" + "\n".join(log_tail))


def pipeline_command(*args: str, profile: str | None = "test", outdir: Path | None = None,
                     workdir: Path | None = None, resume: bool = False, stub: bool = False) -> list[str]:
    cmd = [str(NEXTFLOW), "run", str(ROOT), "-ansi-log", "false"]
    if profile:
        cmd += ["-profile", profile]
    if workdir is not None:
        cmd += ["-w", str(workdir)]
    if outdir is not None:
        cmd += ["--outdir", str(outdir)]
    if resume:
        cmd.append("-resume")
    if stub:
        cmd.append("-stub-run")
    return cmd + [str(a) for a in args]


def _environment(env: Mapping[str, str] | None) -> dict[str, str]:
    out = dict(os.environ)
    out.setdefault("NXF_OFFLINE", "true")
    out.setdefault("NXF_ANSI_LOG", "false")
    # C1-only JIT: Nextflow's start-up (config + script compilation) takes half the CPU time, and a
    # test run is all start-up; the engine's steady state is not the bottleneck here
    out.setdefault("NXF_JVM_OPTS", "-XX:TieredStopAtLevel=1")
    out.pop("NXF_WORK", None)          # -w decides
    out.pop("NXF_CACHE_DIR", None)     # the cache lives in the launch directory
    if env:
        out.update(env)
    return out


def _dirs(base: Path, launchdir, workdir, outdir) -> tuple[Path, Path, Path]:
    base = Path(base)
    launchdir = Path(launchdir) if launchdir is not None else base
    workdir = Path(workdir) if workdir is not None else base / "work"
    outdir = Path(outdir) if outdir is not None else base / "results"
    launchdir.mkdir(parents=True, exist_ok=True)
    return launchdir.resolve(), workdir.resolve(), outdir.resolve()


def run_pipeline(base: Path, *args: str, profile: str | None = "test", outdir: Path | None = None,
                 workdir: Path | None = None, launchdir: Path | None = None, resume: bool = False,
                 stub: bool = False, env: Mapping[str, str] | None = None, timeout: float = 600) -> PipelineRun:
    """Run the pipeline to completion (or `timeout` seconds, after which it is killed).

    Defaults: launch directory `base` (it holds .nextflow/ and .nextflow.log: `-resume` needs the
    same launch directory), work directory `base/work`, outdir `base/results`.
    """
    launchdir, workdir, outdir = _dirs(base, launchdir, workdir, outdir)
    cmd = pipeline_command(*args, profile=profile, outdir=outdir, workdir=workdir, resume=resume, stub=stub)
    started = time.time()
    proc = subprocess.Popen(cmd, cwd=launchdir, env=_environment(env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True)
    timed_out = False
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        kill_process_group(proc)
        stdout, stderr = proc.communicate()
    run = PipelineRun(cmd, proc.returncode, stdout, stderr, launchdir, workdir, outdir, started,
                      time.time() - started, timed_out)
    run.trace_file = run.find_trace_file()
    return run


def start_pipeline(base: Path, *args: str, profile: str | None = "test", outdir: Path | None = None,
                   workdir: Path | None = None, launchdir: Path | None = None, resume: bool = False,
                   stub: bool = False, env: Mapping[str, str] | None = None) -> PipelineRun:
    """Start the pipeline in the background, in a process group of its own (see `kill_process_group`).

    Output goes to launchdir/nextflow.stdout and .stderr; `finish()` waits and fills the result in.
    """
    launchdir, workdir, outdir = _dirs(base, launchdir, workdir, outdir)
    cmd = pipeline_command(*args, profile=profile, outdir=outdir, workdir=workdir, resume=resume, stub=stub)
    out = open(launchdir / "nextflow.stdout", "w")
    err = open(launchdir / "nextflow.stderr", "w")
    started = time.time()
    try:
        proc = subprocess.Popen(cmd, cwd=launchdir, env=_environment(env), stdout=out, stderr=err,
                                start_new_session=True)
    finally:
        out.close()
        err.close()
    return PipelineRun(cmd, None, "", "", launchdir, workdir, outdir, started, 0.0, process=proc)


def finish(run: PipelineRun, timeout: float = 600) -> PipelineRun:
    """Wait for a run from `start_pipeline` (killing it after `timeout`) and read its output."""
    assert run.process is not None, "finish() is for runs made by start_pipeline()"
    try:
        run.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        run.timed_out = True
        kill_process_group(run.process)
    run.returncode = run.process.returncode
    run.seconds = time.time() - run.started
    run.stdout = (run.launchdir / "nextflow.stdout").read_text(errors="replace")
    run.stderr = (run.launchdir / "nextflow.stderr").read_text(errors="replace")
    run.trace_file = run.find_trace_file()
    return run


def stop_pipeline(run: PipelineRun, grace: float = 30) -> None:
    """Interrupt a run from `start_pipeline` as a scheduler would: SIGTERM to Nextflow itself (it aborts
    its tasks and closes its cache), then after `grace` seconds SIGKILL to whatever of its process group
    is left (task processes included)."""
    assert run.process is not None, "stop_pipeline() is for runs made by start_pipeline()"
    _terminate(run.process, grace, whole_group=False)


def kill_process_group(proc: subprocess.Popen, grace: float = 30) -> None:
    """SIGTERM the process group of `proc` (started with start_new_session=True), SIGKILL after `grace` s.

    Only the group this module started is signalled (its id is the pid of `proc`).
    """
    _terminate(proc, grace, whole_group=True)


def _terminate(proc: subprocess.Popen, grace: float, whole_group: bool) -> None:
    """SIGTERM `proc` (or its whole process group), wait up to `grace` s, then SIGKILL the group."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM) if whole_group else os.kill(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    _kill_leftovers(proc.pid)
    proc.wait(timeout=60)


def _kill_leftovers(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def wait_for(predicate, timeout: float, interval: float = 0.5, what: str = "condition"):
    """Poll `predicate()` until it returns a truthy value; that value, or TimeoutError."""
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.time() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# -- trace -------------------------------------------------------------------------------------
def trace_files(outdir: Path) -> list[Path]:
    """All execution trace files in outdir/pipeline_info, oldest first."""
    info = Path(outdir) / "pipeline_info"
    return sorted(info.glob(TRACE_GLOB), key=lambda p: (p.stat().st_mtime, p.name)) if info.is_dir() else []


def latest_trace_file(outdir: Path, since: float | None = None) -> Path | None:
    files = trace_files(outdir)
    if since is not None:
        files = [p for p in files if p.stat().st_mtime >= since]
    return files[-1] if files else None


def read_trace(path: Path) -> list[dict[str, str]]:
    """Rows of a Nextflow trace file (tab-separated, header line) as dicts; a partial last line is skipped."""
    text = Path(path).read_text(errors="replace")
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines = lines[:-1]                  # being written
    reader = csv.DictReader(io.StringIO("".join(lines)), delimiter="\t", quoting=csv.QUOTE_NONE)
    return [row for row in reader if row.get("task_id")]


def trace_rows(outdir: Path, path: Path | None = None) -> list[dict[str, str]]:
    """Rows of the newest trace file in outdir/pipeline_info (or of `path`); [] if there is none."""
    path = path or latest_trace_file(outdir)
    return read_trace(path) if path else []


def process_name(row: Mapping[str, str]) -> str:
    """'LAYERWISE:EXTRACT_ACTIVATIONS' -> 'EXTRACT_ACTIVATIONS'."""
    return row["process"].split(":")[-1]


def rows_of(rows: Iterable[Mapping[str, str]], process: str, status: str | Sequence[str] | None = None) -> list:
    statuses = (status,) if isinstance(status, str) else status
    return [r for r in rows if process_name(r) == process and (statuses is None or r["status"] in statuses)]


def status_counts(rows: Iterable[Mapping[str, str]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        out[r["status"]] = out.get(r["status"], 0) + 1
    return out


# -- outputs -----------------------------------------------------------------------------------
def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def parquet_digest(path: Path) -> str:
    """sha256 of a Parquet file's contents (columns, dtypes, values), not of its bytes."""
    import pandas as pd

    df = pd.read_parquet(path)
    h = hashlib.sha256()
    h.update(repr(list(df.columns)).encode())
    h.update(repr([str(t) for t in df.dtypes]).encode())
    h.update(pd.util.hash_pandas_object(df, index=True).values.tobytes())
    return h.hexdigest()


def output_digest(outdir: Path) -> dict[str, str]:
    """{name relative to outdir: digest} of the results that must not change between runs of the same
    inputs: every layer_checkpoints/*.pt and top-level *.pt (byte sha256), and metadata/*.parquet
    (content digest). Run-specific files (reports, timestamps, extraction_metadata.json) are left out."""
    outdir = Path(outdir)
    digest: dict[str, str] = {}
    for path in sorted(outdir.glob("layer_checkpoints/*.pt")) + sorted(outdir.glob("*.pt")):
        digest[path.relative_to(outdir).as_posix()] = sha256_file(path)
    for path in sorted(outdir.glob("metadata/*.parquet")):
        digest[path.relative_to(outdir).as_posix()] = parquet_digest(path)
    return digest


@dataclass
class FinishedRun:
    """The shared run: `extraction` (-profile test --analysis false) then `trained` (-resume --sae --intervene: SAEs,
    the analysis and the intervention on the published files, nothing re-extracted), in one launch, work and
    output directory."""

    extraction: PipelineRun
    trained: PipelineRun
    digest: dict[str, str]        # output_digest of the extraction's results (layer files, metadata tables)
    metrics: Any                  # sae/metrics.parquet as the trained run wrote it (a DataFrame)
    reference: Path               # a copy of the trained run's outdir as it finished (tests in the finished_run group
                                  # damage and repair the outdir; tests on other workers compare against this copy)

    @property
    def outdir(self):
        return self.trained.outdir

    @property
    def launchdir(self):
        return self.trained.launchdir

    @property
    def workdir(self):
        return self.trained.workdir
