"""SAEOptions: defaults, checks that name the option, the JSON-schema view and the CLI flags (no SAELens)."""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import pytest

from layerwise.core.errors import LayerwiseError
from layerwise.sae.options import SAEOptions, SAEOptionsError, option_specs

ROOT = Path(__file__).resolve().parents[2]
CLI = ROOT / "bin" / "layerwise-train-sae"


def load_cli():
    return importlib.import_module("layerwise.commands.train_sae")   # what bin/layerwise-train-sae runs


def test_defaults_are_valid_and_documented():
    o = SAEOptions()
    assert (o.architecture, o.k, o.language, o.drop_kinds, o.dtype) == ("topk", 32, "pooled", "bos", "float32")
    assert o.kept_kind_names() == ("image", "prompt", "caption", "template") and o.filters_kinds()
    assert o.width(2560) == 10240 and SAEOptions(d_sae=1000).width(2560) == 1000
    specs = option_specs()
    assert list(specs) == [f.name for f in fields(SAEOptions)]
    for f in fields(SAEOptions):
        spec = specs[f.name]
        assert spec["default"] == f.default and spec["description"]
        assert spec["type"] in ("string", "integer", "number", "boolean")
    assert specs["architecture"]["enum"] == ["topk", "jumprelu", "standard"]


@pytest.mark.parametrize("values,name", [
    ({"architecture": "gated"}, "architecture"), ({"k": 0}, "k"), ({"lr": 0}, "lr"), ({"epochs": -1}, "epochs"),
    ({"batch_size": "many"}, "batch_size"), ({"validation_fraction": 1.0}, "validation_fraction"),
    ({"keep_kinds": "images"}, "keep_kinds"), ({"drop_kinds": ""}, "drop_kinds"), ({"dtype": "float16"}, "dtype"),
    ({"device": "gpu0"}, "device"), ({"chunk_tokens": 10, "buffer_tokens": 5}, "buffer_tokens"),
    ({"keep_kinds": "bos", "drop_kinds": "bos"}, "keep_kinds"), ({"expansion_factor": 0}, "expansion_factor"),
    ({"lr_warm_up_fraction": 0.5, "lr_decay_fraction": 0.5}, "lr_warm_up_fraction"), ({"wdith": 3}, "wdith"),
])
def test_invalid_values_name_the_option(values, name):
    with pytest.raises(SAEOptionsError, match=name) as err:
        SAEOptions.from_mapping(values)
    assert isinstance(err.value, LayerwiseError)


def test_k_is_checked_against_the_width():
    with pytest.raises(SAEOptionsError, match="'k' \\(64\\) must be <= the SAE width d_sae \\(32;"):
        SAEOptions(k=64, d_sae=32).width(16)


def test_strings_from_the_command_line_or_nextflow_are_coerced():
    o = SAEOptions.from_mapping({"k": "8", "lr": "1e-3", "epochs": 2, "training_tokens": "1000"})
    assert (o.k, o.lr, o.epochs, o.training_tokens) == (8, 1e-3, 2.0, 1000)


def test_cli_has_one_flag_per_option_and_parses_into_options():
    cli = load_cli()
    parser = cli.build_parser()
    flags = {a.dest for a in parser._actions if a.option_strings}
    assert {f.name for f in fields(SAEOptions)} <= flags
    args = parser.parse_args(["--out-dir", "x", "--k", "7", "--keep-kinds", "caption", "--architecture", "jumprelu",
                              "a.pt"])
    o = cli.parse_options(args)
    assert (o.k, o.keep_kinds, o.architecture) == (7, "caption", "jumprelu")
    assert o.lr == SAEOptions().lr


def test_cli_bad_option_fails_fast_with_one_error_line(tmp_path):
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(CLI), "--out-dir", str(tmp_path), "--k", "0", "x.pt"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "ERROR: SAE option 'k' must be >= 1, got 0"
    assert "Traceback" not in done.stderr
    assert time.perf_counter() - started < 60   # failed before importing SAELens


def test_requirements_pin_sae_lens_once():
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    assert [ln for ln in lines if ln.lower().startswith("sae-lens")] == ["sae-lens==6.54.12"]


def test_docs_name_every_option():
    doc = (ROOT / "docs" / "sae.md").read_text()
    missing = [f.name for f in fields(SAEOptions) if f"`{f.name}`" not in doc]
    assert not missing, f"docs/sae.md does not mention {missing}"
