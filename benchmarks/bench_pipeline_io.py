#!/usr/bin/env python3
"""What a whole pipeline run costs the file system and the scheduler: bytes and SLURM jobs.

    .venv/bin/python benchmarks/bench_pipeline_io.py -- --layer_groups auto --samples_per_task 0
    .venv/bin/python benchmarks/bench_pipeline_io.py --only a -- --layer_groups auto --samples_per_task 120
    .venv/bin/python benchmarks/bench_pipeline_io.py --only b
    .venv/bin/python benchmarks/bench_pipeline_io.py --repo /tmp/baseline ...     # any other checkout

Figures (see benchmarks/README.md, "bench_pipeline_io.py"):

  [a] bytes: `nextflow run <repo> -profile test` over a samplesheet of --samples rows (the fixture's 12
      rows replicated with unique sample ids), with its work directory and --outdir on an ext4 file
      system of its own (a sparse image file on a loop device; the launch directory is elsewhere).
      Kernel bytes written (/sys/fs/ext4/<loop>/lifetime_write_kbytes) and bytes held at the end
      (df used) against the payload (the published <outdir>/layer_checkpoints/layer_*.pt); then
      `rm -rf` of the work directory and a check that every published layer file is a regular file
      (not a symlink) that still loads with torch.load(weights_only=True, mmap=True).
  [b] orchestration: the seed plan (2000 samples x english,arabic x 34 layers) as a stub run
      (-stub-run) with `-profile ncc -c conf/slurm_local.config` on the local single-node SLURM cluster
      of scripts/slurm-cluster.sh, with conf/slurm.config's executor settings (which -profile ncc uses) restored on top of the
      overlay's fast test polling. SLURM jobs submitted (trace rows with a native_id), GPU jobs among
      them, and the wall time of `nextflow run`.

The script only runs `nextflow run` and looks at files, the execution trace and kernel counters:
nothing in it knows the pipeline's processes. Needs root (mount, SLURM), Java, and a checkout
set up by scripts/setup.sh (.venv, nextflow-runtime/lib, tests/fixtures/build).

Arguments after `--` are passed to the [a] run (e.g. `-- --layer_groups auto --samples_per_task 0`);
--orch-args passes a string to the [b] run.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE_REPO = Path(__file__).resolve().parent.parent

# Goals (benchmarks/README.md)
GOAL_WRITTEN_DEFAULTS = 1.3    # written / payload, shipped defaults (one layer group, one sample shard)
GOAL_HELD_DEFAULTS = 1.3       # held / payload, shipped defaults
GOAL_WRITTEN_SHARDS = 2.3      # written / payload with several sample shards
GOAL_JOBS_OVER_GPU = 3         # SLURM jobs <= GPU jobs + 3
GOAL_WALL_S = 150.0            # wall time of the stub run on SLURM

ORCH_LANGUAGES = "english,arabic"
# The plan parameters of the seed job: conf/slurm_local.config sets small-run values for the tiny
# fixture (e.g. layer_groups 2, samples_per_task 6); [b] passes -profile ncc's own values instead.
PLAN_PARAMS = ("layer_groups", "samples_per_task")
TRACE_GLOB = "execution_trace_*.txt"


def say(line: str = "") -> None:
    print(line, flush=True)


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("MET" if ok else "NOT MET")


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


class BenchError(RuntimeError):
    pass


# ------------------------------------------------------------------------------------- helpers
def run_cmd(cmd: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if check and proc.returncode != 0:
        raise BenchError(f"{shlex.join(cmd)} failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def nxf_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("NXF_OFFLINE", "true")
    env["NXF_ANSI_LOG"] = "false"
    env.pop("NXF_WORK", None)        # -w decides
    env.pop("NXF_CACHE_DIR", None)   # the cache lives in the launch directory
    return env


def resolved_config(repo: Path, profile: str | None, configs: tuple[Path, ...] = (), cwd: Path | None = None) -> dict:
    """`nextflow [-c F]... config [-profile P] -o json <repo>`, run in cwd (default: a fresh temp folder)."""
    cmd = [str(repo / "nextflow"), *[x for c in configs for x in ("-c", str(c))], "config"]
    if profile:
        cmd += ["-profile", profile]
    cmd += ["-o", "json", str(repo)]
    with tempfile.TemporaryDirectory(prefix="layerwise-io-cfg-") as tmp:
        proc = run_cmd(cmd, cwd=cwd or tmp, env=nxf_env(), timeout=300)
    return json.loads(proc.stdout)


def kill_group(proc: subprocess.Popen, grace: float = 30) -> None:
    """SIGTERM the process group this script started for `proc`, SIGKILL after `grace` s."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def run_nextflow(cmd: list[str], launchdir: Path, timeout: float, on_poll=None) -> dict:
    """Run `nextflow run ...` in launchdir to completion (or timeout); output in launchdir/nextflow.{stdout,stderr}."""
    out = open(launchdir / "nextflow.stdout", "w")
    err = open(launchdir / "nextflow.stderr", "w")
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(cmd, cwd=launchdir, env=nxf_env(), stdout=out, stderr=err, start_new_session=True)
    finally:
        out.close()
        err.close()
    timed_out = False
    try:
        deadline = t0 + timeout
        while proc.poll() is None:
            if time.monotonic() > deadline:
                timed_out = True
                kill_group(proc)
                break
            if on_poll is not None:
                on_poll()
            time.sleep(1.0)
    except BaseException:
        kill_group(proc)
        raise
    seconds = time.monotonic() - t0
    return {"cmd": cmd, "returncode": proc.returncode, "seconds": seconds, "timed_out": timed_out,
            "stdout": (launchdir / "nextflow.stdout").read_text(errors="replace"),
            "stderr": (launchdir / "nextflow.stderr").read_text(errors="replace"),
            "log": launchdir / ".nextflow.log"}


def failure_text(run: dict, tail: int = 40) -> str:
    log = run["log"].read_text(errors="replace").splitlines()[-tail:] if run["log"].exists() else []
    return (f"command: {shlex.join(run['cmd'])}\nexit {run['returncode']}{' (timed out)' if run['timed_out'] else ''}"
            f" after {run['seconds']:.0f} s\n--- stdout ---\n" + "\n".join(run["stdout"].splitlines()[-tail:])
            + "\n--- stderr ---\n" + "\n".join(run["stderr"].splitlines()[-tail:])
            + f"\n--- {run['log']} ---\n" + "\n".join(log))


def read_trace(outdir: Path) -> list[dict[str, str]]:
    files = sorted((outdir / "pipeline_info").glob(TRACE_GLOB), key=lambda p: p.stat().st_mtime)
    if not files:
        raise BenchError(f"no {TRACE_GLOB} in {outdir / 'pipeline_info'}")
    with open(files[-1], newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def make_samplesheet(fixture_sheet: Path, n: int, dest: Path) -> int:
    """n rows: the fixture's rows over and over, each copy with a unique sample_id; every value that
    names an existing file relative to the fixture samplesheet's folder (the image) made absolute."""
    with open(fixture_sheet, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns = list(reader.fieldnames or [])
        rows = list(reader)
    if not rows or "sample_id" not in columns:
        raise BenchError(f"{fixture_sheet}: no rows or no sample_id column")
    base = fixture_sheet.parent
    for row in rows:
        for col in columns:
            value = row[col]
            if value and not os.path.isabs(value) and (base / value).is_file():
                row[col] = str((base / value).resolve())
    with open(dest, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for i in range(n):
            row = dict(rows[i % len(rows)])
            row["sample_id"] = f"{row['sample_id']}_c{i // len(rows):05d}"
            writer.writerow(row)
    return len(rows)


def fixture_paths(repo: Path) -> tuple[Path, Path]:
    build = repo / "tests" / "fixtures" / "build"
    sheet, model = build / "data" / "samples.csv", build / "model"
    if not sheet.is_file() or not (model / "config.json").is_file():
        raise BenchError(f"fixtures missing in {build}: run scripts/setup.sh in {repo}")
    if not (repo / "nextflow").is_file():
        raise BenchError(f"{repo} has no ./nextflow launcher: not a layerwise checkout?")
    return sheet, model


def venv_python(repo: Path) -> str:
    py = repo / ".venv" / "bin" / "python"
    return str(py) if py.exists() else sys.executable


def param_from_args(args: list[str], name: str) -> str | None:
    """The value of --name (or --name-with-dashes) among Nextflow command-line arguments, the last one wins."""
    value = None
    names = {f"--{name}", f"--{name.replace('_', '-')}"}
    for i, a in enumerate(args):
        key, eq, val = a.partition("=")
        if key in names:
            value = val if eq else (args[i + 1] if i + 1 < len(args) else None)
    return value


# --------------------------------------------------------------------------- [a] ext4 image
class Ext4Image:
    """A sparse ext4 image file mounted on a loop device (unmounted and removed by close())."""

    def __init__(self, image: Path, mountpoint: Path, size: str):
        self.image, self.mountpoint, self.size = image, mountpoint, size
        self.device: str | None = None

    def open(self) -> Ext4Image:
        run_cmd(["truncate", "-s", self.size, str(self.image)])
        # Inode tables and journal initialised by mkfs, not by the kernel's ext4lazyinit thread after
        # mounting (whose writes would be counted as the pipeline's).
        run_cmd(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", str(self.image)])
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        run_cmd(["mount", "-o", "loop", str(self.image), str(self.mountpoint)])
        src = run_cmd(["findmnt", "-n", "-o", "SOURCE", "--target", str(self.mountpoint)]).stdout.strip()
        if not src.startswith("/dev/loop"):
            raise BenchError(f"{self.mountpoint} is mounted from {src!r}, not a loop device")
        self.device = os.path.basename(src)
        if not self.counter_path.exists():
            raise BenchError(f"{self.counter_path} missing: is {self.mountpoint} ext4?")
        return self

    @property
    def counter_path(self) -> Path:
        return Path("/sys/fs/ext4") / str(self.device) / "lifetime_write_kbytes"

    def snapshot(self) -> dict[str, int]:
        """After a sync: bytes the kernel has written to the file system so far, and df's used bytes."""
        os.sync()
        st = os.statvfs(self.mountpoint)
        return {"written_bytes": int(self.counter_path.read_text().strip()) * 1024,
                "used_bytes": (st.f_blocks - st.f_bfree) * st.f_frsize}

    def close(self) -> None:
        if self.device is not None or os.path.ismount(self.mountpoint):
            os.sync()
            if run_cmd(["umount", str(self.mountpoint)], check=False).returncode != 0:
                time.sleep(2)
                if run_cmd(["umount", str(self.mountpoint)], check=False).returncode != 0:
                    run_cmd(["umount", "-l", str(self.mountpoint)], check=False)
            self.device = None
        # mount -o loop sets autoclear; detach explicitly if the loop device is still attached
        attached = run_cmd(["losetup", "-j", str(self.image)], check=False).stdout
        for line in attached.splitlines():
            run_cmd(["losetup", "-d", line.split(":", 1)[0]], check=False)
        if self.image.exists():
            self.image.unlink()


def allocated(folder: Path) -> int:
    """Bytes of the blocks allocated to the files under folder (each inode once, as du counts)."""
    seen, total = set(), 0
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


LOAD_CHECK = r"""
import json, os, stat, sys, torch
out = []
for p in sys.argv[1:]:
    st = os.lstat(p)
    rec = {"path": p, "symlink": stat.S_ISLNK(st.st_mode), "regular": stat.S_ISREG(st.st_mode), "loads": False}
    try:
        obj = torch.load(p, weights_only=True, mmap=True)
        rec["loads"] = True
        del obj
    except Exception as e:
        rec["error"] = f"{type(e).__name__}: {e}"[:300]
    out.append(rec)
print(json.dumps(out))
"""


def bench_bytes(args, repo: Path, scratch: Path, extra: list[str]) -> dict:
    say("== [a] bytes: -profile test on an ext4 file system of its own ==")
    fixture_sheet, _ = fixture_paths(repo)
    base = Path(tempfile.mkdtemp(prefix="layerwise-io-a-", dir=scratch))
    launch = base / "launch"          # off the mount: .nextflow/, .nextflow.log, the samplesheet
    launch.mkdir()
    sheet = launch / "samples.csv"
    n_fixture = make_samplesheet(fixture_sheet, args.samples, sheet)
    image = Ext4Image(base / "fs.img", base / "mnt", args.image_size)
    result: dict = {"samples": args.samples, "fixture_rows": n_fixture, "extra_args": extra, "image_size": args.image_size}
    t_start = time.monotonic()
    try:
        image.open()
        work, outdir = image.mountpoint / "work", image.mountpoint / "results"
        say(f"[a] file system: {args.image_size} sparse image {image.image} on /dev/{image.device} at {image.mountpoint}; "
            f"launch directory {launch}")
        say(f"[a] samplesheet: {args.samples} rows ({n_fixture} fixture rows replicated)")
        before = image.snapshot()
        cmd = [str(repo / "nextflow"), "run", str(repo), "-ansi-log", "false", "-profile", "test",
               "-w", str(work), "--outdir", str(outdir), "--input", str(sheet), *extra]
        say(f"[a] $ {shlex.join(cmd)}")
        run = run_nextflow(cmd, launch, timeout=args.timeout)
        result["command"] = shlex.join(cmd)
        result["run_seconds"] = run["seconds"]
        if run["returncode"] != 0:
            raise BenchError("[a] pipeline run failed\n" + failure_text(run))
        after = image.snapshot()
        layer_files = sorted((outdir / "layer_checkpoints").glob("layer_*.pt"))
        if not layer_files:
            raise BenchError(f"[a] no {outdir}/layer_checkpoints/layer_*.pt after a successful run")
        payload = sum(p.stat().st_size for p in layer_files)
        written = after["written_bytes"] - before["written_bytes"]
        held = after["used_bytes"] - before["used_bytes"]
        published = sum(p.stat().st_size for p in outdir.rglob("*") if p.is_file() and not p.is_symlink())
        held_work, held_outdir = allocated(work), allocated(outdir)

        # rm -rf work/, then every published layer file must still be there, regular, and load
        t_rm = time.monotonic()
        shutil.rmtree(work)
        rm_seconds = time.monotonic() - t_rm
        held_after_rm = image.snapshot()["used_bytes"] - before["used_bytes"]
        check = run_cmd([venv_python(repo), "-c", LOAD_CHECK, *map(str, layer_files)], timeout=1800)
        records = json.loads(check.stdout.strip().splitlines()[-1])
        bad = [r for r in records if r["symlink"] or not r["regular"] or not r["loads"]]

        # Which goal applies: the effective sample shards of this run (-profile test's value unless overridden)
        test_params = resolved_config(repo, "test").get("params", {})
        spt = param_from_args(extra, "samples_per_task") or str(test_params.get("samples_per_task", 0))
        try:
            spt_n = int(spt)
        except ValueError:
            spt_n = 0
        shards = 1 if spt_n <= 0 else math.ceil(args.samples / spt_n)
        defaults = resolved_config(repo, None).get("params", {})
        effective = {k: (param_from_args(extra, k) or str(test_params.get(k))) for k in PLAN_PARAMS}
        shipped = all(str(defaults.get(k)) == effective[k] for k in PLAN_PARAMS)
        if shards > 1:
            goal_written, goal_held, case = GOAL_WRITTEN_SHARDS, None, f"{shards} sample shards"
        elif shipped:
            goal_written, goal_held, case = GOAL_WRITTEN_DEFAULTS, GOAL_HELD_DEFAULTS, "shipped defaults"
        else:
            goal_written, goal_held, case = None, None, "neither the shipped defaults nor several shards: no goal"
        r_written, r_held = written / payload, held / payload
        ok_written = None if goal_written is None else r_written <= goal_written
        ok_held = None if goal_held is None else r_held <= goal_held
        result.update(
            written_bytes=written, held_bytes=held, payload_bytes=payload, layer_files=len(layer_files),
            published_bytes=published, held_work_bytes=held_work, held_outdir_bytes=held_outdir,
            held_after_rm_work_bytes=held_after_rm, rm_work_seconds=rm_seconds,
            written_over_payload=r_written, held_over_payload=r_held, case=case, shards=shards,
            plan_params=effective, goal_written_over_payload=goal_written, goal_held_over_payload=goal_held,
            written_met=ok_written, held_met=ok_held, layer_files_ok=not bad, layer_files_bad=bad[:10],
        )
        gw = f"goal <= {goal_written}" if goal_written is not None else "goal -"
        gh = f"goal <= {goal_held}" if goal_held is not None else "goal - (shipped defaults only)"
        say(f"[a] run: {run['seconds']:.0f} s; {case} ({', '.join(f'{k}={v}' for k, v in effective.items())})")
        say(f"[a] payload (published layer_*.pt): {len(layer_files)} files, {payload} B = {mib(payload)}"
            f" (everything published under --outdir: {mib(published)})")
        say(f"[a] kernel bytes written: {written} B = {mib(written)} = {r_written:.2f}x payload   {gw}   {verdict(ok_written)}")
        say(f"[a] bytes held at the end (df used): {held} B = {mib(held)} = {r_held:.2f}x payload   {gh}   {verdict(ok_held)}")
        say(f"[a] held by folder (allocated blocks): work {mib(held_work)} = {held_work / payload:.2f}x, "
            f"outdir {mib(held_outdir)} = {held_outdir / payload:.2f}x payload")
        say(f"[a] held after rm -rf work: {mib(held_after_rm)} = {held_after_rm / payload:.2f}x payload (rm took {rm_seconds:.1f} s)")
        say(f"[a] after rm -rf work: {len(records) - len(bad)}/{len(records)} layer files are regular files (no symlink) "
            f"that load with torch.load(weights_only=True, mmap=True)   goal all   {'PASS' if not bad else 'FAIL'}")
        for r in bad[:5]:
            say(f"[a]   bad: {r}")
        return result
    finally:
        image.close()
        result["seconds"] = time.monotonic() - t_start
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
        else:
            say(f"[a] kept {base} (the image itself is always removed)")


# ------------------------------------------------------------------------ [b] orchestration
def groovy_literal(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def cancel_jobs_under(workdir: Path) -> None:
    out = run_cmd(["squeue", "-h", "-o", "%i %Z"], check=False).stdout
    ids = [i for i, _, wd in (line.partition(" ") for line in out.splitlines()) if wd.startswith(f"{workdir}/")]
    if ids:
        run_cmd(["scancel", *ids], check=False)


def is_gpu_job(row: dict[str, str], gpu_partition: str) -> bool:
    """A job that asked SLURM for a GPU: --gres=gpu... (or the GPU partition) in its .command.run;
    the trace's queue column when the work directory is not there."""
    wd = row.get("workdir")
    if wd and (Path(wd) / ".command.run").is_file():
        lines = [ln for ln in (Path(wd) / ".command.run").read_text(errors="replace").splitlines()
                 if ln.startswith("#SBATCH")]
        return any(re.search(r"--gres[= ]gpu", ln) for ln in lines) or f"#SBATCH -p {gpu_partition}" in lines
    return row.get("queue") == gpu_partition


def bench_orchestration(args, repo: Path, scratch: Path) -> dict:
    say("== [b] orchestration: the seed plan as a stub run on the local SLURM cluster ==")
    fixture_sheet, fixture_model = fixture_paths(repo)
    overlay = repo / "conf" / "slurm_local.config"
    if not overlay.is_file():
        raise BenchError(f"{overlay} missing")
    result: dict = {"samples": args.orch_samples, "layers": args.orch_layers, "languages": ORCH_LANGUAGES}
    t_start = time.monotonic()
    if not args.no_start_cluster:
        t0 = time.monotonic()
        run_cmd(["bash", str(repo / "scripts" / "slurm-cluster.sh"), "start"], timeout=900)
        say(f"[b] SLURM cluster ready ({time.monotonic() - t0:.1f} s: bash {repo}/scripts/slurm-cluster.sh start)")
    base = Path(tempfile.mkdtemp(prefix="layerwise-io-b-", dir=scratch))
    try:
        # Model: the fixture with the seed's 34 decoder layers in config.json (a stub run loads no weights)
        model = base / "model"
        shutil.copytree(fixture_model, model)
        cfg = json.loads((model / "config.json").read_text())
        text = cfg.get("text_config", cfg)
        old_layers = int(text.get("num_hidden_layers", 0))
        text["num_hidden_layers"] = args.orch_layers
        if isinstance(text.get("layer_types"), list) and text["layer_types"]:
            # keep the config self-consistent: the same sliding/full pattern, repeated
            pattern = text["layer_types"]
            text["layer_types"] = [pattern[i % len(pattern)] for i in range(args.orch_layers)]
        (model / "config.json").write_text(json.dumps(cfg, indent=2))
        sheet = base / "samples.csv"
        make_samplesheet(fixture_sheet, args.orch_samples, sheet)

        # -profile ncc alone: its executor settings (restored over the overlay's fast test polling) and
        # its plan parameters (the overlay sets small-run values for the tiny fixture)
        ncc = resolved_config(repo, "ncc")
        ncc_executor = {k: v for k, v in ncc.get("executor", {}).items() if not isinstance(v, dict)}
        overlaid = resolved_config(repo, "ncc", (overlay,))
        gpu_partition = str(overlaid.get("params", {}).get("gpu_partition", "gpu"))
        restore = base / "ncc_executor.config"
        restore.write_text("// conf/slurm.config's executor settings (which -profile ncc uses), over conf/slurm_local.config's\nexecutor {\n"
                           + "".join(f"    {k} = {groovy_literal(v)}\n" for k, v in ncc_executor.items()) + "}\n")
        effective = {k: v for k, v in resolved_config(repo, "ncc", (overlay, restore)).get("executor", {}).items()
                     if not isinstance(v, dict)}
        if any(effective.get(k) != v for k, v in ncc_executor.items()):
            raise BenchError(f"[b] executor settings not restored: {effective} vs -profile ncc's {ncc_executor}")
        plan = {k: ncc["params"][k] for k in PLAN_PARAMS if k in ncc.get("params", {})}
        plan_args = [x for k, v in plan.items() for x in (f"--{k}", str(v))]
        extra = shlex.split(args.orch_args or "")

        launch, work, outdir = base / "launch", base / "work", base / "results"
        launch.mkdir()
        cmd = [str(repo / "nextflow"), "run", str(repo), "-ansi-log", "false", "-profile", "ncc",
               "-c", str(overlay), "-c", str(restore), "-stub-run", "-w", str(work), "--outdir", str(outdir),
               "--input", str(sheet), "--model", str(model), "--layers", "all", "--languages", ORCH_LANGUAGES,
               *plan_args, *extra]
        say(f"[b] model: copy of {fixture_model} with num_hidden_layers {old_layers} -> {args.orch_layers}; "
            f"samplesheet {args.orch_samples} rows")
        say(f"[b] executor (conf/slurm.config's, as -profile ncc uses them): {', '.join(f'{k}={v}' for k, v in ncc_executor.items())}")
        say(f"[b] $ {shlex.join(cmd)}")
        try:
            run = run_nextflow(cmd, launch, timeout=args.orch_timeout)
        finally:
            cancel_jobs_under(work)
        result.update(command=shlex.join(cmd), executor=ncc_executor, plan_params=plan,
                      wall_seconds=run["seconds"], returncode=run["returncode"])
        if run["returncode"] != 0:
            raise BenchError("[b] stub run on SLURM failed\n" + failure_text(run))
        rows = read_trace(outdir)
        jobs = [r for r in rows if r.get("native_id", "-") not in ("", "-")]
        gpu = [r for r in jobs if is_gpu_job(r, gpu_partition)]
        per_process: dict[str, int] = {}
        for r in jobs:
            name = r.get("process") or r.get("name", "?").split(" (")[0]
            per_process[name.split(":")[-1]] = per_process.get(name.split(":")[-1], 0) + 1
        ok_jobs = len(jobs) <= len(gpu) + GOAL_JOBS_OVER_GPU
        ok_wall = run["seconds"] <= GOAL_WALL_S
        result.update(trace_rows=len(rows), slurm_jobs=len(jobs), gpu_jobs=len(gpu), jobs_per_process=per_process,
                      goal_jobs=f"<= gpu_jobs + {GOAL_JOBS_OVER_GPU}", jobs_met=ok_jobs,
                      goal_wall_seconds=GOAL_WALL_S, wall_met=ok_wall)
        say(f"[b] plan: {args.orch_samples} samples x {ORCH_LANGUAGES} x {args.orch_layers} layers, "
            f"{', '.join(f'{k}={v}' for k, v in plan.items())} (-profile ncc's values)")
        say(f"[b] SLURM jobs submitted: {len(jobs)} (GPU jobs {len(gpu)}, other {len(jobs) - len(gpu)})   "
            f"goal <= GPU jobs + {GOAL_JOBS_OVER_GPU} = {len(gpu) + GOAL_JOBS_OVER_GPU}   {verdict(ok_jobs)}")
        say(f"[b] jobs per process: {', '.join(f'{k} {v}' for k, v in sorted(per_process.items()))}")
        say(f"[b] wall time of nextflow run: {run['seconds']:.0f} s   goal <= {GOAL_WALL_S:.0f} s   {verdict(ok_wall)}")
        return result
    finally:
        result["seconds"] = time.monotonic() - t_start
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
        else:
            say(f"[b] kept {base}")


# ------------------------------------------------------------------------------------- main
def main() -> int:
    argv = sys.argv[1:]
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                usage="%(prog)s [options] [-- extra arguments of the [a] nextflow run]")
    p.add_argument("--repo", type=Path, default=HERE_REPO,
                   help="the pipeline checkout to measure (default: the one containing this script)")
    p.add_argument("--only", choices=("a", "b", "bytes", "orchestration"), default=None,
                   help="run only [a] (bytes) or only [b] (orchestration)")
    p.add_argument("--samples", type=int, default=480, help="[a] samplesheet rows (default 480)")
    p.add_argument("--image-size", default="16G",
                   help="[a] size of the sparse ext4 image (truncate -s syntax, default 16G; only what is written takes space)")
    p.add_argument("--timeout", type=float, default=5400, help="[a] seconds for the pipeline run (default 5400)")
    p.add_argument("--orch-samples", type=int, default=2000, help="[b] samplesheet rows (default 2000: the seed job)")
    p.add_argument("--orch-layers", type=int, default=34, help="[b] num_hidden_layers of the model copy (default 34)")
    p.add_argument("--orch-timeout", type=float, default=1800, help="[b] seconds for the stub run (default 1800)")
    p.add_argument("--orch-args", default="", help="[b] extra arguments for its nextflow run (one string)")
    p.add_argument("--no-start-cluster", action="store_true",
                   help="[b] do not call scripts/slurm-cluster.sh start (the cluster is already up)")
    p.add_argument("--scratch", type=Path, default=Path(tempfile.gettempdir()),
                   help="where the temporary folders (and the [a] image) go (default: the temp directory)")
    p.add_argument("--json", type=Path, default=None, help="also write every figure as JSON here")
    p.add_argument("--keep", action="store_true", help="keep the temporary folders (the [a] image is always removed)")
    args = p.parse_args(argv)

    repo = args.repo.resolve()
    do_a = args.only in (None, "a", "bytes")
    do_b = args.only in (None, "b", "orchestration")
    if os.geteuid() != 0:
        say("bench_pipeline_io.py needs root (mount -o loop for [a], the SLURM cluster for [b])")
        return 2
    commit = run_cmd(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], check=False).stdout.strip() or "?"
    say(f"bench_pipeline_io.py: repo {repo} (HEAD {commit}); load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    report: dict = {"repo": str(repo), "commit": commit, "argv": sys.argv[1:]}
    failures: list[str] = []
    t0 = time.monotonic()
    if do_a:
        try:
            report["bytes"] = bench_bytes(args, repo, args.scratch, extra)
        except BenchError as e:
            failures.append(str(e))
            say(f"[a] FAILED: {e}")
    if do_b:
        try:
            report["orchestration"] = bench_orchestration(args, repo, args.scratch)
        except BenchError as e:
            failures.append(str(e))
            say(f"[b] FAILED: {e}")
    report["seconds"] = time.monotonic() - t0
    report["failures"] = failures

    parts = []
    a, b = report.get("bytes", {}), report.get("orchestration", {})
    if "written_over_payload" in a:
        parts.append(f"[a] written/payload {a['written_over_payload']:.2f} {verdict(a['written_met'])}, "
                     f"held/payload {a['held_over_payload']:.2f} {verdict(a['held_met'])}, "
                     f"layer files after rm -rf work {'PASS' if a['layer_files_ok'] else 'FAIL'}")
    if "slurm_jobs" in b:
        parts.append(f"[b] {b['slurm_jobs']} SLURM jobs ({b['gpu_jobs']} GPU) {verdict(b['jobs_met'])}, "
                     f"{b['wall_seconds']:.0f} s {verdict(b['wall_met'])}")
    if failures:
        parts.append(f"{len(failures)} part(s) FAILED")
    say(f"Summary ({report['seconds']:.0f} s): " + "; ".join(parts))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
        say(f"JSON: {args.json}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
