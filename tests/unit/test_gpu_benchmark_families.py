"""benchmarks/gpu_benchmark.py for every model family (issue 18, item 10), without a GPU.

* `--meta --model-type all`: each family's full-size architecture, built on the meta device (no memory), has the
  published checkpoint's parameter count and decoder layers, and one synthetic sample gets the family's real
  number of image tokens through layerwise's own encoding.
* `--smoke --model-type X`: the benchmark's whole code path (bare/capture forwards, the write-once extraction,
  `run_unit` per language) on the tiny fixture architecture of the family on the CPU; every figure is printed
  and positive. A feature-cache family (Qwen2-VL, PaliGemma) runs the vision tower once per image through
  `images.per_image_features` and its units share one image cache; Mllama runs it inside every forward. Counts
  are asserted, never timings. ~8 s each on 2 loaded cores, the meta run ~10 s.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_benchmark.py"

# The published sizes (hub safetensors totals) and decoder layer lists of the checkpoints the researchers compare.
PUBLISHED = {  # model_type: (parameters, decoder layers incl. Mllama's cross-attention layers, hidden size)
    "gemma3": (4.30e9, 34, 2560),       # google/gemma-3-4b-it (exactly 4,300,079,472)
    "paligemma": (2.92e9, 18, 2048),    # google/paligemma-3b-pt-224
    "qwen2_vl": (8.29e9, 28, 3584),     # Qwen/Qwen2-VL-7B-Instruct
    "llava": (7.06e9, 32, 4096),        # llava-hf/llava-1.5-7b-hf
    "mllama": (10.67e9, 40, 4096),      # meta-llama/Llama-3.2-11B-Vision-Instruct
    "qwen2_5_vl": (8.29e9, 28, 3584),   # Qwen/Qwen2.5-VL-7B-Instruct
    "llava_next": (7.57e9, 32, 4096),   # llava-hf/llava-v1.6-mistral-7b-hf
    "idefics3": (8.46e9, 32, 4096),     # HuggingFaceM4/Idefics3-8B-Llama3
    "smolvlm": (2.25e9, 24, 2048),      # HuggingFaceTB/SmolVLM2-2.2B-Instruct
}
# Image tokens of one 500x375 picture (Gemma 3: 768x768) with the real image-processor settings
FIXED_IMAGE_TOKENS = {"gemma3": 256, "paligemma": 256, "llava": 576, "mllama": 0,
                      "qwen2_vl": 234, "qwen2_5_vl": 234}   # Qwen: (504/28) * (364/28) after smart_resize


def _run(args: list[str], timeout: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env=env)


def _json_line(out: str, prefix: str) -> dict:
    line = next(ln for ln in out.splitlines() if ln.startswith(prefix + " "))
    return json.loads(line.removeprefix(prefix + " "))


def test_full_size_architectures_on_the_meta_device_have_the_published_sizes():
    from layerwise.models.families import FAMILIES

    done = _run(["--meta", "--model-type", "all"], timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    result = _json_line(done.stdout, "META_JSON")
    assert set(result) == set(PUBLISHED) == set(FAMILIES)      # --model-type all: every family of the table
    for model_type, (params, layers, hidden) in PUBLISHED.items():
        r = result[model_type]
        assert f"[meta] {model_type} (" in done.stdout
        assert abs(r["parameters"] / params - 1) < 0.02, (model_type, r["parameters"], params)
        assert r["decoder_layers"] == layers and r["hidden_size"] == hidden, (model_type, r)
        parts = r["parameter_breakdown"]
        assert parts["vision"] > 0 and parts["language"] > 0
        assert parts["vision"] + parts["language"] + parts["lm_head"] + parts["other"] == r["parameters"]
        for lang in ("english", "arabic"):
            tokens = r["tokens"][lang]
            assert tokens["tokens"] > tokens["image_tokens"] >= 0
            if model_type in FIXED_IMAGE_TOKENS:
                assert tokens["image_tokens"] == FIXED_IMAGE_TOKENS[model_type], (model_type, tokens)
            else:
                assert tokens["image_tokens"] > 576, (model_type, tokens)   # tiles / any-resolution grids
    assert result["gemma3"]["parameters"] == 4_300_079_472
    assert "expected 4,300,079,472: ok" in done.stdout


@pytest.mark.parametrize("model_type,layers", [("qwen2_vl", 4), ("mllama", 8), ("paligemma", 4)])
def test_smoke_mode_of_a_family_prints_every_figure(tmp_path, model_type, layers):
    from layerwise.models.families import FAMILIES

    json_out = tmp_path / "gpu.json"
    done = _run(["--smoke", "--model-type", model_type, "--write-dir", str(tmp_path), "--json-out", str(json_out)],
                timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    cache = FAMILIES[model_type].feature_cache
    assert cache == (model_type != "mllama")
    diet_line = "compute-diet check: max |plain - reused image features|" if cache else "compute-diet check: n/a"
    for figure in ("[disk]", "[bare]", "[capture]", "[extract] time:", "[extract] PROJECTED", "[unit] english:",
                   "[unit] arabic:", "[unit] PROJECTED", "RATIO capture+write/bare", "Summary: (a) seed job projected",
                   f"layerwise GPU benchmark, {model_type} (", diet_line):
        assert figure in out, f"missing {figure!r} in:\n{out}"
    projected = re.findall(r"\[(extract|unit)\] PROJECTED .*?seed job \(2000 samples x 2 languages x (\d+) layers.*? "
                           r"on one GPU: ([0-9.]+) min", out)
    assert [(p, int(n)) for p, n, _ in projected] == [("extract", layers), ("unit", layers)], out
    assert all(float(minutes) >= 0 for *_, minutes in projected)

    result = _json_line(out, "BENCHMARK_JSON")
    assert result == json.loads(json_out.read_text())
    assert result["smoke"] is True and result["model_type"] == model_type and result["failed_phases"] == []
    assert result["layers"] == layers and result["seed_job"]["layers"] == layers
    diff = result["compute_diet_max_abs_diff"]
    # per-image features through mm_encoder_outputs vs the model's own pixel pass of the batch (0 here on the CPU;
    # a batched vision call need not be bit-identical to one image at a time, so a bound as for Gemma 3)
    assert diff is None if not cache else 0 <= diff < 1e-3, diff
    assert result["parameters"] > 0 and result["published_parameters_b"] is None
    image_tokens = result["image_tokens_per_sample"]["english"]
    assert image_tokens == 0 if model_type == "mllama" else image_tokens > 0
    phases = {p["phase"]: p for p in result["phases"]}
    assert set(phases) == {"disk", "bare", "capture", "extract", "unit"}
    for name in ("bare", "capture", "extract", "unit"):
        ph = phases[name]
        assert ph["samples"] == 4 and ph["seconds"] > 0 and ph["samples_per_s"] > 0, ph
        # feature cache: each image once, both languages reuse its features (the unit phase: the first unit fills
        # the shared cache, the second hits it); else inside every forward: each image once per language
        assert ph["vision_tower_images"] == (4 if cache else 8), ph
    extract, unit = phases["extract"], phases["unit"]
    assert extract["nan_values"] == 0 and unit["nan_values"] == 0
    assert extract["positions_kept"] == extract["tokens"]       # selection all
    assert extract["files"] == unit["files"] == 2 * layers
    assert extract["final_bytes"] == extract["expected_bytes"] == extract["bytes_written"] > 0
    assert extract["file_check"]["ok"] is True
    assert unit["image_cache"] is cache
    assert [u["vision_tower_images"] for u in unit["units"]] == ([4, 0] if cache else [4, 4])
    assert [u["image_cache_hit"] for u in unit["units"]] == ([False, True] if cache else [None, None])
    assert set(result["projected_seed_job_s"]) == {"extract", "unit"}
    assert all(v > 0 for v in result["projected_seed_job_s"].values())
    assert all(v > 0 for v in result["ratios_vs_bare"].values()) and "extract" in result["ratios_vs_bare"]
    assert not list(tmp_path.glob("layerwise-gpu-bench-*")), "the work folder is removed"


def test_all_families_only_with_meta():
    done = _run(["--model-type", "all"], timeout=60)
    assert done.returncode == 2 and "--model-type all needs --meta" in done.stderr
