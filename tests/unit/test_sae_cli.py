"""bin/layerwise-train-sae end to end (in process: SAELens is imported once per test session)."""
from __future__ import annotations

import importlib
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from layerwise.core.errors import LayerwiseError
from layerwise.sae.metrics import METRIC_COLUMNS
from layerwise.sae.options import option_specs
from tests.support import sae_synthetic as synthetic

ROOT = Path(__file__).resolve().parents[2]


def load_cli():
    return importlib.import_module("layerwise.commands.train_sae")   # what bin/layerwise-train-sae runs




pytestmark = pytest.mark.usefixtures("quiet_offline_trainer")


def test_cli_trains_one_sae_per_layer_and_writes_metrics(tmp_path, capsys):
    files = synthetic.write_planted_set(tmp_path / "data", layers=[2, 4], languages=["english", "arabic"],
                                        n_samples=30, hidden=16, layout="ragged")
    out = tmp_path / "sae"
    cli = load_cli()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)          # tiny matrices: one thread is faster on a shared machine
    try:
        rc = cli.main(["--out-dir", str(out), "--d-sae", "32", "--k", "4", "--training-tokens", "2048",
                       "--batch-size", "128", "--chunk-tokens", "128", "--buffer-tokens", "512", "--device", "cpu",
                       "--validation-fraction", "0.3", "--norm-estimate-batches", "2", *map(str, files.values())])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    printed = capsys.readouterr().out
    assert "layer 2 (pooled: arabic,english): topk d_sae=32" in printed and "4 metric records" in printed
    for layer in (2, 4):
        folder = out / f"layer_{layer}"
        assert {"cfg.json", "sae_weights.safetensors", "split.json", "metrics.json", "training.json"} <= \
            {p.name for p in folder.iterdir()}
        assert json.loads((folder / "training.json").read_text())["tokens_seen"] == 2048
    frame = pd.read_parquet(out / "metrics.parquet")
    assert list(frame.columns) == list(METRIC_COLUMNS) and len(frame) == 4
    assert sorted(set(frame.layer)) == [2, 4] and set(frame.language) == {"pooled"}
    assert not list(out.glob(".*partial"))


def test_cli_user_errors(tmp_path, capsys):
    cli = load_cli()
    files = synthetic.write_planted_set(tmp_path, layers=[1], languages=["english"], n_samples=6, hidden=8)
    with pytest.raises(LayerwiseError, match="'language' is 'arabic'"):
        cli.main(["--out-dir", str(tmp_path / "o"), "--language", "arabic", "--device", "cpu",
                  str(files[(1, "english")])])
    with pytest.raises(LayerwiseError, match="no layer files"):
        cli.main(["--out-dir", str(tmp_path / "o")])
    assert cli.main(["--print-options-schema"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(option_specs()))
