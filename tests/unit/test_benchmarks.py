"""Smoke tests of benchmarks/: they run in their smallest modes and print every figure (no timing asserts)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"


def _run(args: list[str], timeout: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


def test_bench_extraction_smallest_mode_prints_every_figure(fixture_dir):
    done = _run([str(BENCH / "bench_extraction.py"), "--samples", "2", "--batch-size", "2", "--repeats", "1",
                 "--threads", "1"], timeout=420)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for figure in ("[a] RATIO extraction/bare", "[a] EXTRACTION run_unit", "[a] bare model.model",
                   "[b] ragged: bytes written", "[b] padded: bytes written",
                   "[b] ragged: per layer file", "[b] padded: per layer file",
                   "[b] ragged: kernel /proc/self/io", "[b] padded: kernel /proc/self/io",
                   "[c] padded: summary peak_host_memory_bytes", "[c] ragged: peak anonymous RSS",
                   "[d] one unit without image_cache", "[d] without image_cache", "[d] with shared image_cache",
                   "[e] Gemma-3-4B (34 layers)", "[e] tiny model", "Summary:"):
        assert figure in out, f"missing {figure!r} in:\n{out}"
    # Counts, not timings: the shared image cache runs the vision tower once per distinct image (two units of
    # one shard: once for both), the seed split costs 85.
    assert "sharing one image_cache: vision-tower images 1 (1 in the first" in out
    assert "vision-tower images 2 (cache fills 2 + units' own forward 0" in out
    assert "= 85 layer forwards per sample and language vs default 1 group(s) = 34: overhead 2.50x" in out


def test_gpu_benchmark_smoke(tmp_path):
    """gpu_benchmark.py --smoke: the GPU benchmark's whole code path (the write-once data path, run_unit with a
    shared image cache) on the tiny fixture architecture on the CPU; ~20 s."""
    json_out = tmp_path / "gpu.json"
    done = _run([str(BENCH / "gpu_benchmark.py"), "--smoke", "--write-dir", str(tmp_path), "--json-out", str(json_out)],
                timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for figure in ("[disk]", "[bare]", "[capture]", "[extract] time:", "[extract] PROJECTED", "[unit] english:",
                   "[unit] arabic:", "[unit] PROJECTED", "RATIO capture+write/bare", "Summary: (a) seed job projected"):
        assert figure in out, f"missing {figure!r} in:\n{out}"
    line = next(ln for ln in out.splitlines() if ln.startswith("BENCHMARK_JSON "))
    result = json.loads(line.removeprefix("BENCHMARK_JSON "))
    assert result == json.loads(json_out.read_text())
    assert result["smoke"] is True and result["layers"] == 6 and result["failed_phases"] == []
    assert result["compute_diet_max_abs_diff"] is not None and result["compute_diet_max_abs_diff"] < 1e-3
    phases = {p["phase"]: p for p in result["phases"]}
    assert set(phases) == {"disk", "bare", "capture", "extract", "unit"}
    for name in ("bare", "capture", "extract", "unit"):
        assert phases[name]["samples"] == 4, phases[name]
        assert phases[name]["vision_tower_images"] == 4    # once per image, both languages reuse it
    extract, unit = phases["extract"], phases["unit"]
    assert extract["nan_values"] == 0 and unit["nan_values"] == 0
    assert extract["positions_kept"] == extract["tokens"]  # selection all
    assert extract["files"] == 12 and extract["final_bytes"] == extract["expected_bytes"] == extract["bytes_written"] > 0
    assert extract["file_check"]["ok"] is True
    assert unit["files"] == 12 and [u["image_cache_hit"] for u in unit["units"]] == [False, True]
    assert set(result["projected_seed_job_s"]) == {"extract", "unit"} and "extract" in result["ratios_vs_bare"]
    assert not list(tmp_path.glob("layerwise-gpu-bench-*")), "the work folder is removed"


def test_bench_intervention_smallest_mode_prints_every_figure(fixture_dir):
    done = _run([str(BENCH / "bench_intervention.py"), "--config", "tiny", "--images", "2", "--new-tokens", "3",
                 "--batch-size", "2", "--k", "8", "--repeats", "1"], timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for figure in ("plain generation:", "with the hook:", "ratio hooked/plain:", "published design: 500 images x 27 "
                   "conditions x 2 caption languages x 64 tokens = 1,728,000 new tokens"):
        assert figure in out, f"missing {figure!r} in:\n{out}"
