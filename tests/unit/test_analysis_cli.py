"""bin/layerwise-analyze end to end, the written outputs and report, and the documentation of every column."""
from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from layerwise.analysis import outputs
from tests.support.analysis_synthetic import SyntheticSpec, write_synthetic_run

ROOT = Path(__file__).resolve().parents[2]
CLI = ROOT / "bin" / "layerwise-analyze"


def _load_cli():
    return importlib.import_module("layerwise.commands.analyze")   # what bin/layerwise-analyze runs


def test_cli_help_runs_as_a_script():
    done = subprocess.run([sys.executable, str(CLI), "--help"], capture_output=True, text=True, timeout=120,
                          cwd="/", env={**os.environ, "PYTHONPATH": ""})
    assert done.returncode == 0, done.stderr
    for flag in ("--out-dir", "--sae-dir", "--folds", "--permutations", "--seed", "LAYER_FILE.pt"):
        assert flag in done.stdout


def test_cli_writes_every_output_and_a_self_contained_report(tmp_path, capsys):
    run = write_synthetic_run(tmp_path / "files", SyntheticSpec(
        n_samples=30, hidden=8, layers=(0, 1, 2), signal={"caption": 2.0}, token_selection="text",
        dtype=torch.bfloat16, layout="ragged"))
    out = tmp_path / "out"
    assert _load_cli().main(["--out-dir", str(out), "--permutations", "2", "--folds", "3", "--seed", "1",
                             *map(str, run.paths)]) == 0
    assert "analysis done" in capsys.readouterr().out
    for name in (outputs.PROBES, outputs.DIRECTIONS, outputs.CKA, outputs.CROSSLINGUAL):
        df = pd.read_parquet(out / name)
        assert list(df.columns) == outputs.TABLES[name] and len(df) > 0, name
    assert not (out / outputs.SAE_FEATURES).exists()                       # no SAE given
    probes = pd.read_parquet(out / outputs.PROBES)
    assert set(probes.view) == {"prompt", "caption"}                        # `text` files have no image tokens
    assert len(probes) == 3 * 2 * 2 and (probes.n_permutations == 2).all() and (probes.n_folds == 3).all()
    cka = pd.read_parquet(out / outputs.CKA)
    assert len(cka) == 2 * 2 * 9 and (cka[cka.layer_a == cka.layer_b].cka.sub(1).abs() < 1e-5).all()
    assert cka.adjacent.sum() == 2 * 2 * 2
    cross = pd.read_parquet(out / outputs.CROSSLINGUAL)
    assert len(cross) == 3 * 2 and set(zip(cross.language_a, cross.language_b)) == {("english", "arabic")}
    summary = json.loads((out / outputs.SUMMARY).read_text())
    skipped = [n for n in summary["notes"] if n["stage"] == "views"]
    assert {n["message"].split("'")[1] for n in skipped} == {"image", "all"}
    assert len(skipped) == 2 * 3 * 2                                        # per file, per skipped view
    html = (out / outputs.REPORT).read_text()
    assert html.count("data:image/png;base64,") >= 5
    assert not re.search(r"(src|href)=\"(https?:)?//", html) and "<script" not in html
    assert "lexical leakage" in html and "does not contain it" in html


def test_cli_bad_input_is_one_error_line_and_exit_2(tmp_path, capsys):
    from layerwise.core.cli import run_cli

    cli = _load_cli()
    with pytest.raises(SystemExit) as exc:
        run_cli(lambda: cli.main(["--out-dir", str(tmp_path), str(tmp_path / "missing.pt")]))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("ERROR: ") and "missing.pt" in err and "Traceback" not in err


def test_conflicting_or_unknown_inputs_are_refused(tmp_path):
    from layerwise.analysis import analyze
    from layerwise.core.errors import LayerwiseError

    run = write_synthetic_run(tmp_path / "a", SyntheticSpec(n_samples=10, hidden=4, layers=(0,), languages=("english",)))
    with pytest.raises(LayerwiseError, match="two files for layer 0"):
        analyze(run.paths + run.paths, tmp_path / "out")
    with pytest.raises(LayerwiseError, match="unknown analysis option"):
        analyze(run.paths, tmp_path / "out", permutation=3)
    with pytest.raises(LayerwiseError, match="unknown view"):
        analyze(run.paths, tmp_path / "out", views=("images",))
    other = write_synthetic_run(tmp_path / "b", SyntheticSpec(n_samples=11, hidden=4, layers=(1,), languages=("english",)))
    with pytest.raises(LayerwiseError, match="different samples"):
        analyze(run.paths + other.paths, tmp_path / "out")


def test_docs_describe_every_column_of_every_output():
    doc = (ROOT / "docs" / "analysis.md").read_text(encoding="utf-8")
    for name, columns in outputs.TABLES.items():
        m = re.search(rf"^## `{re.escape(name)}`.*?(?=^## |\Z)", doc, flags=re.S | re.M)
        assert m, f"docs/analysis.md has no section '## `{name}`'"
        first_cells = re.findall(r"^\| ([^|]+)\|", m.group(0), flags=re.M)
        documented = {name for cell in first_cells for name in re.findall(r"`([a-z0-9_]+)`", cell)}
        assert set(columns) <= documented, f"{name}: undocumented columns {sorted(set(columns) - documented)}"
    for name in (outputs.REPORT, outputs.SUMMARY):
        assert f"`{name}`" in doc
