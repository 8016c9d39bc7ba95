"""`-profile ncc` on a real SLURM cluster: the single-node cluster of scripts/slurm-cluster.sh (slurmctld,
slurmd, munge; partitions cpu and gpu; one fake A100 gres), with the overlay conf/slurm_local.config
applied by -c on top of the ncc profile itself (docs/slurm-ci.md).

  a. the tiny-fixture run through the slurm executor publishes the same tensors and metadata as the
     local `-profile test` run with the same parameters (the shared run of tests/integration/conftest.py);
  b. GPU-labelled tasks (EXTRACT_ACTIVATIONS) were submitted to partition gpu with
     --gres=gpu:a100:1 (their .command.run, the controller's job records, and the job environment:
     CUDA_VISIBLE_DEVICES=0); the other tasks went to partition cpu without a gres;
  c. an extraction job cancelled with scancel after its first checkpoint is retried (continuing from
     the checkpoint) or, if the run fails, completed by -resume; the outputs equal the uninterrupted run.

Needs root (the cluster script installs and starts the daemons); not root fails, unless
LAYERWISE_SKIP_SLURM=1 skips the module explicitly. The local reference is the integration tier's shared
`-profile test` run; the node has a single fake GPU, so the 8 GPU jobs of the full run go one at a time, as on a
real one-GPU node; the scancel run extracts 3 layers of one language (2 GPU jobs).
"""
from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tests.support.engine import nextflow_env
from tests.support.pipeline_helpers import (
    NEXTFLOW,
    ROOT,
    PipelineRun,
    finish,
    kill_process_group,
    start_pipeline,
)

OVERLAY = ROOT / "conf" / "slurm_local.config"
CLUSTER_SCRIPT = ROOT / "scripts" / "slurm-cluster.sh"
GPU_PROCESSES = {"EXTRACT_ACTIVATIONS"}
GRES = "gpu:a100:1"
RUN_TIMEOUT = 1200       # seconds for one run on the cluster (about 4 minutes on an idle 2-core node)
POLL = 1.5               # seconds between two snapshots of the controller's job records
# Parameters that decide the outputs: the local reference run gets the overlay's values for all of them
OUTPUT_PARAMS = ("input", "model", "prompts", "layers", "layer_groups", "languages", "samples_per_task",
                 "batch_size", "checkpoint_interval", "dtype", "device", "token_selection", "layout", "nan_policy",
                 "combined_files", "share_image_features")
# SLURM sets CUDA_VISIBLE_DEVICES in a job that has a GPU gres; an empty value in the submitting
# environment (exported to every job by sbatch) shows that CPU jobs got none.
SLURM_ENV = {"CUDA_VISIBLE_DEVICES": ""}

# Test-only config: every task prints, after its script, what SLURM gave it (into .command.log, the
# job's output file). afterScript is unused by the pipeline and does not touch the venv beforeScript.
PROBE_CONFIG = """\
process.afterScript = 'echo "slurm-probe: job=${SLURM_JOB_ID-unset} partition=${SLURM_JOB_PARTITION-unset} CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset}"'
"""
PROBE_RE = re.compile(r"^slurm-probe: job=(\S*) partition=(\S*) CUDA_VISIBLE_DEVICES=(\S*)$", re.M)

# Test c: the extraction must still be running when scancel arrives, and after a checkpoint so that
# the retry has one to continue from. A `beforeScript = 'sleep 15'` would replace the venv activation
# of conf/venv.config (process.beforeScript, a closure that a -c file cannot extend) and would hit the
# job before extraction starts. Instead a sitecustomize.py, put on PYTHONPATH by a test-only -c config
# (env scope: every task exports it; the venv activation leaves PYTHONPATH alone), wraps
# layerwise.extract.unit.Extractor._commit in the layerwise-extract process: the first unit that commits a
# checkpoint writes a marker (its task directory) and sleeps; every later unit, and the retry, run
# unchanged because the marker exists. The test cancels the sleeping job.
PAUSE_HOOK = '''\
"""Test hook of tests/integration/test_slurm.py: pause the first extraction unit right after its first checkpoint."""
import os
import sys

MARKER = {marker!r}

if sys.argv and os.path.basename(sys.argv[0]) == "layerwise-extract":
    import importlib.abc
    import importlib.util
    import time

    def _patch(module):
        commit = module.Extractor._commit

        def _commit(path, cfg, writers, done):
            commit(path, cfg, writers, done)
            tmp = MARKER + ".%d" % os.getpid()
            with open(tmp, "w") as fh:
                fh.write("%s\\n%d\\n" % (os.getcwd(), done))
            try:
                os.link(tmp, MARKER)        # atomic: only the first unit ever pauses
            except FileExistsError:
                return
            finally:
                os.unlink(tmp)
            print("layerwise test hook: checkpoint after sample %d committed, waiting for scancel" % done,
                  file=sys.stderr, flush=True)
            time.sleep(900)

        module.Extractor._commit = staticmethod(_commit)

    class _Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name != "layerwise.extract.unit":
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(name)
            exec_module = spec.loader.exec_module

            def exec_and_patch(module):
                exec_module(module)
                _patch(module)

            spec.loader.exec_module = exec_and_patch
            return spec

    sys.meta_path.insert(0, _Finder())
'''


# -- cluster and runs ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def slurm_cluster():
    """The local cluster, started (idempotently) by scripts/slurm-cluster.sh; left running afterwards."""
    if os.environ.get("LAYERWISE_SKIP_SLURM") == "1":
        pytest.skip("LAYERWISE_SKIP_SLURM=1: SLURM tests skipped on request")
    if os.geteuid() != 0:
        pytest.fail("the SLURM tests need root: scripts/slurm-cluster.sh installs and starts munged, slurmctld "
                    "and slurmd. Run them as root, or set LAYERWISE_SKIP_SLURM=1 to skip them explicitly.",
                    pytrace=False)
    started = time.time()
    proc = subprocess.run(["bash", str(CLUSTER_SCRIPT), "start"], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"bash {CLUSTER_SCRIPT} start failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}",
                    pytrace=False)
    print(f"\n[slurm] cluster ready in {time.time() - started:.1f} s")
    return proc.stdout


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _slurm_jobs(workdir: Path) -> dict[str, dict[str, str]]:
    """Controller records (`scontrol -d -o show job`) of the jobs whose output file is under workdir."""
    out = subprocess.run(["scontrol", "-d", "-o", "show", "job"], capture_output=True, text=True).stdout
    jobs = {}
    for line in out.splitlines():
        rec = dict(tok.split("=", 1) for tok in line.split() if "=" in tok)
        if rec.get("StdOut", "").startswith(f"{workdir}/") and "JobId" in rec:
            jobs[rec["JobId"]] = rec
    return jobs


def _snapshot(workdir: Path, seen: dict[str, dict[str, str]]) -> None:
    """Accumulate job records; keep the GPU index a running job was given (GRES=gpu:a100:1(IDX:0))."""
    for job_id, rec in _slurm_jobs(workdir).items():
        old = seen.get(job_id, {})
        idx = re.search(r"\(IDX:([^)]*)\)", rec.get("GRES", ""))
        rec["gres_idx_seen"] = idx.group(1) if idx else old.get("gres_idx_seen", "")
        rec["running_seen"] = "yes" if rec.get("JobState") == "RUNNING" else old.get("running_seen", "")
        seen[job_id] = rec


def _cancel_jobs_under(workdir: Path) -> None:
    """scancel the jobs of this run that are still queued or running (after a failure or a timeout)."""
    out = subprocess.run(["squeue", "-h", "-o", "%i %Z"], capture_output=True, text=True).stdout
    ids = [i for i, _, wd in (line.partition(" ") for line in out.splitlines()) if wd.startswith(f"{workdir}/")]
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True)


def run_on_slurm(base: Path, *args: str, configs=(), resume: bool = False, on_poll=None,
                 timeout: float = RUN_TIMEOUT) -> PipelineRun:
    """`nextflow run . -profile ncc -c conf/slurm_local.config [-c extra]... args`, to completion.

    The controller's job records are sampled every POLL seconds while it runs (run.jobs: job id ->
    record), so that even the first jobs are still known at the end (MinJobAge=300 s forgets them).
    On a failure or timeout the Nextflow process group is killed and the run's jobs are cancelled.
    """
    extra = [x for c in (OVERLAY, *configs) for x in ("-c", str(c))]
    run = start_pipeline(base, *extra, *args, profile="ncc", resume=resume, env=SLURM_ENV)
    run.jobs = {}
    try:
        deadline = time.time() + timeout
        while run.process.poll() is None and time.time() < deadline:
            _snapshot(run.workdir, run.jobs)
            if on_poll is not None:
                on_poll(run)
            time.sleep(POLL)
        _snapshot(run.workdir, run.jobs)
        finish(run, timeout=max(1.0, deadline - time.time()))
    except BaseException:
        kill_process_group(run.process)
        raise
    finally:
        _cancel_jobs_under(run.workdir)
    return run


def assert_ok(run: PipelineRun, what: str) -> None:
    assert not run.timed_out, f"{what}: nextflow timed out\n{run.failure_message()}"
    assert run.returncode == 0, f"{what}: nextflow failed\n{run.failure_message()}"


def resolved_configs(**variants: list[str]) -> dict[str, dict]:
    """`nextflow [-c file] config -profile P -o json <repo>` for each variant (name: [options..., profile]),
    run concurrently; closures come back as their source text."""
    procs = {}
    for name, args in variants.items():
        cmd = [str(NEXTFLOW), *args[:-1], "config", "-profile", args[-1], "-o", "json", str(ROOT)]
        procs[name] = (cmd, subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                             text=True, env=nextflow_env()))
    out = {}
    for name, (cmd, proc) in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{shlex.join(cmd)} failed:\n{stdout}\n{stderr}"
        out[name] = json.loads(stdout)
    return out


@pytest.fixture(scope="module")
def configs() -> dict[str, dict]:
    """Resolved configurations: ncc alone, ncc + the overlay, and test."""
    return resolved_configs(ncc=["ncc"], overlay=["-c", str(OVERLAY), "ncc"], test=["test"])


@pytest.fixture(scope="module")
def runs(slurm_cluster, configs, tmp_path_factory):
    """The uninterrupted run on the cluster."""
    base = tmp_path_factory.mktemp("slurm_runs")
    probe = _write(base / "probe.config", PROBE_CONFIG)
    slurm = run_on_slurm(base / "slurm", configs=[probe])
    print(f"\n[slurm] cluster run {slurm.seconds:.0f} s")
    assert_ok(slurm, "-profile ncc -c conf/slurm_local.config")
    return {"slurm": slurm}


@pytest.fixture
def local_reference(finished_run):
    """The local reference: the integration tier's shared `-profile test` run (its first launch extracted with the
    test profile's parameters, which test_overlay_keeps_the_ncc_scheduling checks the overlay shares for every
    parameter that decides the outputs), read from the copy of its outdir taken when it finished."""
    local = replace(finished_run.trained, outdir=finished_run.reference)
    local.roots = {str(finished_run.reference): "<outdir>", **_roots(finished_run.trained)}
    return local


# -- comparison of published outputs ---------------------------------------------------------------
TIMING_KEY = re.compile(r"(seconds|time|duration|created|per_s$|_utc$|peak_)", re.I)


def _normalise(value, roots: dict[str, str]):
    """Strings with the run's own directories replaced by placeholders."""
    if isinstance(value, str):
        for root, name in roots.items():
            value = value.replace(root, name)
    return value


def _diff(a, b, where: str, roots_a, roots_b, out: list[str]) -> None:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            out.append(f"{where}: tensor vs {type(b).__name__}")
        elif a.dtype != b.dtype or a.shape != b.shape:
            out.append(f"{where}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}")
        elif not torch.equal(a, b):
            out.append(f"{where}: tensors differ (max |diff| {(a.double() - b.double()).abs().max().item():.3g})")
    elif isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            out.append(f"{where}: keys {sorted(map(str, a))} vs {sorted(map(str, b))}")
        for k in a.keys() & b.keys():
            _diff(a[k], b[k], f"{where}[{k!r}]", roots_a, roots_b, out)
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            out.append(f"{where}: length {len(a)} vs {len(b)}")
        for i, (x, y) in enumerate(zip(a, b)):
            _diff(x, y, f"{where}[{i}]", roots_a, roots_b, out)
    elif isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        pass
    elif _normalise(a, roots_a) != _normalise(b, roots_b):
        out.append(f"{where}: {a!r} vs {b!r}")


def _roots(run: PipelineRun) -> dict[str, str]:
    """The run's own directories (a copied outdir also names the outdir it was copied from: run.roots)."""
    return getattr(run, "roots", None) or {str(run.outdir): "<outdir>", str(run.workdir): "<workdir>",
                                           str(run.launchdir): "<launchdir>"}


def _parquet_records(path: Path) -> list[dict]:
    import pandas as pd

    df = pd.read_parquet(path)
    df = df[[c for c in df.columns if not TIMING_KEY.search(c)]]
    return [{k: (None if v is pd.NA else v) for k, v in row.items()} for row in df.to_dict("records")] + \
        [{"__columns__": list(df.columns), "__dtypes__": [str(t) for t in df.dtypes]}]


def _metadata_json(path: Path) -> dict:
    """extraction_metadata.json without the per-run parts (creation time, per-job timings and resume
    counters: extraction / image_encoding; the run's name; where each published file came from)."""
    data = json.loads(path.read_text())
    # the report embeds the run's time and paths; every data file's checksum must agree
    data["published"] = sorted((r["path"], r["sha256"]) for r in data.get("published", [])
                               if not r["path"].endswith(".html"))
    # vision_tower counts images encoded by this run: fewer when an earlier run's cache entry was reused
    return {k: v for k, v in data.items()
            if k not in ("created_utc", "extraction", "image_encoding", "vision_tower", "run_name")}


def published(run: PipelineRun, layer_files_only: bool = False) -> dict[str, Path]:
    out = run.outdir
    files = [*out.glob("layer_checkpoints/*.pt")]
    if not layer_files_only:
        files += [*out.glob("*.pt"), *out.glob("metadata/*.parquet"), out / "extraction_metadata.json"]
    return {p.relative_to(out).as_posix(): p for p in files if p.is_file()}


def assert_same_outputs(a: PipelineRun, b: PipelineRun, layer_files: int = 12) -> list[str]:
    """Published layer files, combined files, Parquet metadata and extraction_metadata.json of two runs
    have equal contents (tensors with torch.equal; paths to each run's own directories and timings left out).
    With `layer_files` < 12, `a` extracted a subset: its layer files equal those of `b`."""
    files_a, files_b = published(a, layer_files < 12), published(b, layer_files < 12)
    if layer_files < 12:
        files_b = {n: p for n, p in files_b.items() if n in files_a}
    assert sorted(files_a) == sorted(files_b), "different sets of published files"
    assert sum(n.startswith("layer_checkpoints/") for n in files_a) == layer_files, sorted(files_a)
    problems: list[str] = []
    for name in sorted(files_a):
        pa, pb = files_a[name], files_b[name]
        if name.endswith(".pt"):
            va = torch.load(pa, map_location="cpu", weights_only=True)
            vb = torch.load(pb, map_location="cpu", weights_only=True)
            for key in ("activations", "token_ids", "lengths", "sample_ids"):
                assert key in va, f"{name} has no {key!r}"
        elif name.endswith(".parquet"):
            va, vb = _parquet_records(pa), _parquet_records(pb)
        else:
            va, vb = _metadata_json(pa), _metadata_json(pb)
        _diff(va, vb, name, _roots(a), _roots(b), problems)
    assert not problems, "outputs differ:\n" + "\n".join(problems[:40])
    return sorted(files_a)


# -- trace, task directories -------------------------------------------------------------------------
def trace_of(run: PipelineRun) -> list[dict[str, str]]:
    rows = run.trace()
    assert rows, f"no trace file of this run in {run.outdir}/pipeline_info"
    return rows


def proc_name(row) -> str:
    return row["process"].split(":")[-1]


def sbatch_lines(workdir: str) -> list[str]:
    return [ln.strip() for ln in (Path(workdir) / ".command.run").read_text().splitlines()
            if ln.startswith("#SBATCH")]


def probe_of(workdir: str) -> tuple[str, str, str]:
    log = (Path(workdir) / ".command.log").read_text(errors="replace")
    found = PROBE_RE.findall(log)
    assert len(found) == 1, f"{workdir}/.command.log: expected one slurm-probe line, got {found}\n{log[-2000:]}"
    return found[0]


# -- tests -------------------------------------------------------------------------------------------
def test_overlay_keeps_the_ncc_scheduling(configs):
    """The overlay changes parameters, caps and polling only: executor, queues and clusterOptions
    (plain and per label) are those of -profile ncc, and they resolve to partition gpu + gres a100:1."""
    ncc, ovl, test = configs["ncc"], configs["overlay"], configs["test"]
    for key in ("executor", "queue", "clusterOptions", "withLabel:process_gpu", "errorStrategy", "maxRetries"):
        assert ovl["process"][key] == ncc["process"][key], f"process.{key} differs from -profile ncc"
    gpu = ovl["process"]["withLabel:process_gpu"]
    assert ovl["process"]["executor"] == "slurm" and ovl["executor"]["name"] == "slurm"
    assert "params.gpu_partition" in gpu["queue"] and "--gres=gpu:" in gpu["clusterOptions"]
    p = ovl["params"]
    assert (p["gpu_partition"], p["cpu_partition"], p["gpu_type"], p["slurm_account"]) == ("gpu", "cpu", "a100", None)
    # the node: 2 CPUs, ~22 GB; one GPU job asks for 1 CPU, 2 GB, 30 min (x attempt)
    assert ovl["process"]["resourceLimits"] == {"cpus": 2, "memory": "4 GB", "time": "1h"}
    assert (p["gpu_cpus"], p["gpu_memory"], p["gpu_time"]) == (1, "2 GB", "30m")
    assert p["modules"] == "" and p["venv"] == str(ROOT / ".venv")
    assert p["hf_home"] is None and p["container"] is None
    for key in OUTPUT_PARAMS:   # the tiny fixture with the small-run settings of -profile test
        assert p[key] == test["params"][key], f"params.{key}: overlay {p[key]!r} vs test {test['params'][key]!r}"
    assert ovl["executor"]["pollInterval"] == "2 sec" and ovl["executor"]["queueStatInterval"] == "3 sec"


def test_slurm_run_matches_local_run(runs, local_reference):
    """a. Same layer files, combined files and metadata as the local run with the same parameters."""
    slurm, local = runs["slurm"], local_reference
    rows = trace_of(slurm)
    assert {r["status"] for r in rows} == {"COMPLETED"}, [(r["name"], r["status"]) for r in rows]
    assert all(r["native_id"].isdigit() for r in rows), "slurm tasks carry their SLURM job id"
    assert len([r for r in rows if proc_name(r) == "EXTRACT_ACTIVATIONS"]) == 8
    names = assert_same_outputs(slurm, local)
    print(f"\n[slurm] {len(names)} published files equal: {', '.join(names)}")


def test_gpu_tasks_got_partition_gpu_and_the_a100_gres(runs):
    """b. EXTRACT_ACTIVATIONS: #SBATCH -p gpu + --gres=gpu:a100:1 in .command.run, the
    controller's record (Partition=gpu, TresPerNode=gres:gpu:a100:1, GPU index 0 while running) and the
    job environment (CUDA_VISIBLE_DEVICES=0, SLURM_JOB_PARTITION=gpu)."""
    slurm = runs["slurm"]
    gpu_rows = [r for r in trace_of(slurm) if proc_name(r) in GPU_PROCESSES]
    assert {proc_name(r) for r in gpu_rows} == GPU_PROCESSES and len(gpu_rows) == 8
    for row in gpu_rows:
        job, wd = row["native_id"], row["workdir"]
        lines = sbatch_lines(wd)
        assert "#SBATCH -p gpu" in lines and f"#SBATCH --gres={GRES}" in lines, (row["name"], lines)
        rec = slurm.jobs.get(job)
        assert rec is not None, f"{row['name']}: job {job} never seen by scontrol"
        assert rec["Partition"] == "gpu" and rec.get("TresPerNode") == f"gres:{GRES}", (row["name"], rec)
        assert rec["JobState"] == "COMPLETED" and rec["ExitCode"] == "0:0", (row["name"], rec)
        assert rec["gres_idx_seen"] == "0", f"{row['name']}: no GPU index seen while running: {rec}"
        assert probe_of(wd) == (job, "gpu", "0"), row["name"]
    ex = next(r for r in gpu_rows if proc_name(r) == "EXTRACT_ACTIVATIONS")
    rec = slurm.jobs[ex["native_id"]]
    print(f"\n[slurm] {ex['name']}: {' | '.join(sbatch_lines(ex['workdir']))}")
    print(f"[slurm] scontrol job {ex['native_id']}: JobState={rec['JobState']} Partition={rec['Partition']} "
          f"JOB_GRES={rec.get('JOB_GRES')} GRES(running)=gpu:a100:1(IDX:{rec['gres_idx_seen']}) "
          f"TresPerNode={rec.get('TresPerNode')}")
    print(f"[slurm] probe: {' '.join(probe_of(ex['workdir']))}")


def test_cpu_tasks_got_partition_cpu_without_gres(runs):
    """b. PREFLIGHT, PUBLISH_RESULTS, ANALYZE_LAYERS: partition cpu, no gres, no CUDA_VISIBLE_DEVICES from SLURM."""
    slurm = runs["slurm"]
    cpu_rows = [r for r in trace_of(slurm) if proc_name(r) not in GPU_PROCESSES]
    assert sorted(proc_name(r) for r in cpu_rows) == ["ANALYZE_LAYERS", "PREFLIGHT", "PUBLISH_RESULTS"]
    for row in cpu_rows:
        job, wd = row["native_id"], row["workdir"]
        lines = sbatch_lines(wd)
        assert "#SBATCH -p cpu" in lines and not any("--gres" in ln for ln in lines), (row["name"], lines)
        rec = slurm.jobs.get(job)
        assert rec is not None, f"{row['name']}: job {job} never seen by scontrol"
        assert rec["Partition"] == "cpu" and rec.get("TresPerNode", "(null)") in ("(null)", ""), (row["name"], rec)
        assert rec.get("JOB_GRES", "(null)") == "(null)" and not rec["gres_idx_seen"], (row["name"], rec)
        assert rec["JobState"] == "COMPLETED", (row["name"], rec)
        # SLURM_ENV exports an empty value; the job sees it empty or not at all, never a GPU index
        job_seen, partition, cuda = probe_of(wd)
        assert (job_seen, partition) == (job, "cpu") and cuda in ("", "unset"), (row["name"], probe_of(wd))


# The scancel run extracts one layer group of one language (2 shards: 2 GPU jobs), enough for a job to cancel
CANCEL_RUN = ("--layers", "0-2", "--languages", "english", "--analysis", "false")
CANCEL_LAYER_FILES = 3


def test_scancelled_extraction_is_retried_or_resumed_with_identical_outputs(runs, tmp_path):
    """c. scancel an EXTRACT_ACTIVATIONS job while it runs (paused right after its first checkpoint, see
    PAUSE_HOOK): the task is retried (exit 143 is in base.config's retry range) and the retry continues
    from the checkpoint; or, if the run fails, -resume completes it. Its layer files (layers 0-2, English)
    equal those of the uninterrupted run."""
    marker = tmp_path / "hook" / "paused"
    _write(tmp_path / "hook" / "sitecustomize.py", PAUSE_HOOK.format(marker=str(marker)))
    pause = _write(tmp_path / "pause.config", f"env.PYTHONPATH = '{tmp_path / 'hook'}'\n")
    cancelled: dict[str, str] = {}

    def cancel_when_paused(run: PipelineRun) -> None:
        if cancelled or not marker.exists():
            return
        workdir, done = marker.read_text().splitlines()[:2]
        # job id, state, working directory, name (last: Nextflow job names contain '|')
        queue = subprocess.run(["squeue", "-h", "-o", "%i %t %Z %j"], capture_output=True, text=True).stdout
        match = [line.split(" ", 3) for line in queue.splitlines() if line.split(" ", 3)[2] == workdir]
        assert len(match) == 1, f"no queued job for {workdir}:\n{queue}"
        job, state, _, name = match[0]
        assert state == "R" and "EXTRACT_ACTIVATIONS" in name, match[0]
        assert list(Path(workdir).glob("*/.partial/progress.json")), "no checkpoint before the cancel"
        subprocess.run(["scancel", job], check=True)
        cancelled.update(job=job, name=name, workdir=workdir, done=done)
        print(f"\n[slurm] scancel {job} ({name}, RUNNING, checkpoint after sample {done}) in {workdir}")

    first = run_on_slurm(tmp_path, *CANCEL_RUN, configs=[pause], on_poll=cancel_when_paused)
    assert cancelled, f"no extraction job paused after a checkpoint\n{first.failure_message()}"
    rec = first.jobs[cancelled["job"]]
    print(f"[slurm] scontrol job {cancelled['job']}: JobState={rec['JobState']} ExitCode={rec['ExitCode']}")
    assert rec["JobState"] == "CANCELLED", rec
    rows = trace_of(first)
    killed = [r for r in rows if r["native_id"] == cancelled["job"]]
    assert len(killed) == 1 and killed[0]["status"] in ("FAILED", "ABORTED"), killed
    print(f"[slurm] trace of the cancelled attempt: status={killed[0]['status']} exit={killed[0]['exit']} "
          f"attempt={killed[0]['attempt']} action={killed[0]['error_action']}")

    if first.returncode == 0:
        # retried within the run: attempt 2 of the same task continued from the checkpoint of attempt 1
        retry = [r for r in rows if r["name"] == killed[0]["name"] and r["attempt"] == "2"]
        assert killed[0]["error_action"] == "RETRY" and len(retry) == 1 and retry[0]["status"] == "COMPLETED", retry
        err = (Path(retry[0]["workdir"]) / ".command.err").read_text(errors="replace")
        assert f"resuming after sample {cancelled['done']}" in err, err[-2000:]
        units = json.loads((first.outdir / "extraction_metadata.json").read_text())["extraction"]["units"]
        assert sorted(u["resumed_from_sample"] for u in units) == [0] * (len(units) - 1) + [int(cancelled["done"])]
        final = first
        print(f"[slurm] retried: attempt 2 ({retry[0]['native_id']}) resumed after sample {cancelled['done']}")
    else:
        final = run_on_slurm(tmp_path, *CANCEL_RUN, configs=[pause], resume=True)
        assert_ok(final, "-resume after the scancel")
        again = [r for r in trace_of(final) if r["name"] == killed[0]["name"]]
        assert [r["status"] for r in again] == ["COMPLETED"], again
        print(f"[slurm] run failed (exit {first.returncode}); -resume completed it in {final.seconds:.0f} s")
    assert_same_outputs(final, runs["slurm"], layer_files=CANCEL_LAYER_FILES)
