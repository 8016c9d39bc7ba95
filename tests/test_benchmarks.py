"""Smoke tests of benchmarks/: they run in their smallest modes and print every figure (no timing asserts)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
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
                   "[c] padded: summary peak_host_memory_bytes", "[c] ragged: peak anonymous RSS",
                   "[d] without compute diet", "[d] with compute diet",
                   "[e] Gemma-3-4B (34 layers)", "[e] tiny model", "Summary:"):
        assert figure in out, f"missing {figure!r} in:\n{out}"
    # Counts, not timings: the diet runs the vision tower once per distinct image, the seed split costs 85.
    assert "vision-tower images 2 (encode_images 2 + units 0)" in out
    assert "= 85 layer forwards per sample and language vs default 1 group(s) = 34: overhead 2.50x" in out


def test_gpu_benchmark_dry_run(tmp_path):
    json_out = tmp_path / "gpu.json"
    done = _run([str(BENCH / "gpu_benchmark.py"), "--dry-run", "--samples", "4", "--batch-size", "2",
                 "--budget-s", "240", "--phases", "bare,caption,caption-diet,all", "--json-out", str(json_out)],
                timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("BENCHMARK_JSON "))
    result = json.loads(line.removeprefix("BENCHMARK_JSON "))
    assert result == json.loads(json_out.read_text())
    assert result["dry_run"] is True and result["layers"] == 6
    assert result["compute_diet_max_abs_diff"] is not None and result["compute_diet_max_abs_diff"] < 1e-3
    phases = {p["phase"]: p for p in result["phases"]}
    assert set(phases) == {"bare", "caption", "caption-diet", "all"}
    for name, phase in phases.items():
        assert phase["samples"] == 4, phase
        assert phase["nan_values"] == 0
        assert "PROJECTED" in done.stdout
    assert phases["caption"]["vision_tower_images"] == 8       # once per image and language
    assert phases["caption-diet"]["vision_tower_images"] == 4  # once per image
    assert phases["all"]["positions_kept"] == phases["all"]["tokens"]
    assert 0 < phases["caption"]["positions_kept"] < phases["caption"]["tokens"]
    assert phases["all"]["final_bytes"] > phases["caption"]["final_bytes"] > 0
