"""benchmarks/bench_sae.py in its smallest mode prints every figure with its goal (no timing asserts)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_sae_tiny_prints_every_figure(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_sae", ROOT / "benchmarks" / "bench_sae.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out_json = tmp_path / "bench.json"
    assert bench.main(["--config", "tiny", "--repeats", "1", "--threads", "1", "--workdir", str(tmp_path / "w"),
                       "--json-out", str(out_json)]) == 0
    out = capsys.readouterr().out
    for figure in ("[a] provider rows per epoch", "[a] cold:", "[a] warm:", "[a]  ram:", "[a] RATIO disk/RAM",
                   "goal: cold >= 0.8", "[a] per CPU-second", "[a] context: single-row random reads",
                   "[b] N:", "[b] 4N:", "[b] 4N vs N", "goal: within 10 %", "[c] training on cpu", "Summary:"):
        assert figure in out, f"missing {figure!r} in:\n{out}"
    result = json.loads(out_json.read_text())
    assert result["b"]["4N"]["rows"] > 3 * result["b"]["N"]["rows"] > 0      # 4N really has ~4x the rows
    assert result["a"]["rows"] == result["b"]["N"]["rows"]                   # same epoch in both figures
    assert result["c"]["tokens"] == 8192
