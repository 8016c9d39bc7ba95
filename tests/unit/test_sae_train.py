"""SAE training end to end on tiny planted layer files, checked from the outputs alone.

One module-scoped fixture trains every SAE once (SAELens imported once). The checks reload each
SAE with `sae_lens.SAE.load_from_disk` and recompute the held-out figures from the layer files
with their own reading, masks and formulas, not with layerwise.sae's code.
"""
from __future__ import annotations

import hashlib
import json

import pytest
import torch

from layerwise.sae.metrics import METRIC_COLUMNS, read_metrics, write_metrics
from layerwise.sae.options import SAEOptions
from layerwise.sae.outputs import collect_metrics
from tests.support import sae_synthetic as synthetic

pytestmark = pytest.mark.usefixtures("quiet_offline_trainer")

H, N_SAMPLES, VAL_FRACTION = 32, 60, 0.25
BASE = dict(d_sae=64, epochs=10, batch_size=128, lr=3e-3, chunk_tokens=256, buffer_tokens=1024,
            validation_fraction=VAL_FRACTION, device="cpu", norm_estimate_batches=5)
RUNS = {  # name: (layers, options)
    "topk": ([0, 1], SAEOptions(architecture="topk", k=4, **BASE)),
    "jumprelu": ([0], SAEOptions(architecture="jumprelu", l0_coefficient=0.3, **BASE)),
    "standard": ([0], SAEOptions(architecture="standard", l1_coefficient=1.0, **BASE)),
    "topk_english": ([0], SAEOptions(architecture="topk", k=4, language="english", **{**BASE, "epochs": 20})),
}
INFERENCE_CLASS = {"topk": "TopKSAE", "jumprelu": "JumpReLUSAE", "standard": "StandardSAE"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from layerwise.sae.train import train_layer_sae

    root = tmp_path_factory.mktemp("sae")
    files = {}
    files.update(synthetic.write_planted_set(root / "data", layers=[0, 1], languages=["english"],
                                             n_samples=N_SAMPLES, hidden=H, n_features=H, layout="padded",
                                             dtype=torch.float32))
    files.update(synthetic.write_planted_set(root / "data", layers=[0, 1], languages=["arabic"],
                                             n_samples=N_SAMPLES, hidden=H, n_features=H, layout="ragged",
                                             dtype=torch.bfloat16))
    out = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)          # tiny matrices: one thread is faster, above all on a shared machine
    try:
        for name, (layers, options) in RUNS.items():
            for layer in layers:
                paths = [files[(layer, "english")], files[(layer, "arabic")]]
                out_root = root / name.removesuffix("_english")      # layer_0 and layer_0_english side by side
                records = train_layer_sae(paths, out_root, options)
                folder = out_root / records[0]["sae_dir"]
                out[(name, layer)] = {"records": {r["split"]: r for r in records}, "folder": folder,
                                      "options": options, "files": paths if options.language == "pooled" else paths[:1]}
    finally:
        torch.set_num_threads(threads)
    return {"root": root, "runs": out}


def documented_split(sample_id: str) -> bool:
    digest = hashlib.sha256(b"layerwise-sae-split-v1\0" + b"0" + b"\0" + sample_id.encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64 < VAL_FRACTION


def held_out_rows(files, held_out: set[str]) -> torch.Tensor:
    """Rows of the held-out samples, not padding, not bos: read here, without layerwise.sae."""
    rows = []
    for path in files:
        d = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        for i, sid in enumerate(d["sample_ids"]):
            if sid not in held_out:
                continue
            n = int(d["lengths"][i])
            if d["layout"] == "padded":
                x, kinds = d["activations"][i, :n], d["token_kinds"][i, :n]
            else:
                a, b = int(d["offsets"][i]), int(d["offsets"][i + 1])
                x, kinds = d["activations"][a:b], d["token_kinds"][a:b]
            keep = (kinds != 0) & (kinds != 1)
            rows.append(x[keep].float())
    return torch.cat(rows)


def test_every_sae_loads_as_the_inference_class(trained):
    from sae_lens import SAE

    for (_name, layer), run in trained["runs"].items():
        sae = SAE.load_from_disk(run["folder"])
        assert type(sae).__name__ == INFERENCE_CLASS[run["options"].architecture]
        assert (sae.cfg.d_in, sae.cfg.d_sae) == (H, 64)
        assert sae.cfg.metadata.hook_name == f"blocks.{layer}.hook_resid_post"
        assert sae.cfg.normalize_activations == "none"          # the scaling is folded in: takes raw rows
        assert run["folder"].name == (f"layer_{layer}" if run["options"].language == "pooled" else f"layer_{layer}_english")


def test_held_out_figures_recomputed_independently(trained):
    from sae_lens import SAE

    for key, run in trained["runs"].items():
        split = json.loads((run["folder"] / "split.json").read_text())
        held_out = set(split["validation"])
        all_ids = {f"img{i:05d}" for i in range(N_SAMPLES)}
        assert held_out == {s for s in all_ids if documented_split(s)}
        assert not held_out & set(split["train"]) and held_out | set(split["train"]) == all_ids
        x = held_out_rows(run["files"], held_out).double()
        sae = SAE.load_from_disk(run["folder"])
        with torch.no_grad():
            acts = sae.encode(x.float())
            x_hat = sae.decode(acts).double()
        ev = 1 - ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
        rec = run["records"]["validation"]
        assert rec["tokens"] == x.shape[0] and rec["samples"] == len(held_out)
        assert abs(rec["explained_variance"] - float(ev)) < 1e-4, (key, rec["explained_variance"], float(ev))
        assert abs(rec["mse"] - float(((x - x_hat) ** 2).mean())) < 1e-4 * max(1.0, rec["mse"])
        assert abs(rec["mean_l0"] - float((acts != 0).sum(1).double().mean())) < 1e-6
        assert abs(rec["dead_fraction"] - float((~(acts != 0).any(0)).double().mean())) < 1e-9
        # The planted structure is learnt: far above reconstructing every row by the mean (EV 0),
        # and above the training-set mean used on the held-out rows.
        train_mean = held_out_rows(run["files"], set(split["train"])).double().mean(0)
        baseline = 1 - ((x - train_mean) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
        assert float(baseline) <= 0.0
        assert rec["explained_variance"] > 0.8, (key, rec)
        assert rec["explained_variance"] - float(baseline) > 0.8


def test_budget_and_records(trained):
    for (_name, layer), run in trained["runs"].items():
        recs, opts = run["records"], run["options"]
        train_rows = sum(held_out_rows(run["files"], set(json.loads((run["folder"] / "split.json").read_text())["train"])).shape[:1])
        assert recs["train"]["tokens"] == train_rows
        steps = int(round(opts.epochs * train_rows)) // opts.batch_size
        assert recs["train"]["tokens_seen"] == recs["validation"]["tokens_seen"] == steps * opts.batch_size
        for r in recs.values():
            assert set(METRIC_COLUMNS) <= set(r)
            assert (r["layer"], r["d_in"], r["d_sae"], r["architecture"]) == (layer, H, 64, opts.architecture)
            assert r["language"] == opts.language
            assert r["languages"] == ("arabic,english" if opts.language == "pooled" else "english")
            assert r["k"] == (4 if opts.architecture == "topk" else 0)
        training = json.loads((run["folder"] / "training.json").read_text())
        assert training["options"] == opts.to_dict() and training["tokens_seen"] == recs["train"]["tokens_seen"]
        assert json.loads((run["folder"] / "metrics.json").read_text()) == list(recs.values())


def test_held_out_samples_are_the_same_for_every_layer_and_language(trained):
    runs = trained["runs"]
    splits = {k: json.loads((r["folder"] / "split.json").read_text())["validation"] for k, r in runs.items()}
    assert len({tuple(v) for v in splits.values()}) == 1


def test_metrics_parquet(trained, tmp_path):
    records = collect_metrics(trained["root"] / "topk")
    path = write_metrics(records, tmp_path / "metrics.parquet")
    frame = read_metrics(path)
    assert list(frame.columns) == list(METRIC_COLUMNS)
    assert len(frame) == 6   # layer_0, layer_0_english, layer_1 x (train, validation)
    assert set(frame.sae_dir) == {"layer_0", "layer_0_english", "layer_1"}
    assert set(frame.split) == {"train", "validation"}
    v = frame[(frame.sae_dir == "layer_1") & (frame.split == "validation")].iloc[0]
    assert v.explained_variance == pytest.approx(trained["runs"][("topk", 1)]["records"]["validation"]["explained_variance"])


def test_evaluate_split_reproduces_the_record_for_any_saelens_sae(trained):
    """The path docs/sae.md gives for published SAEs (Gemma Scope): options from training.json, same rows."""
    from sae_lens import SAE

    from layerwise.sae import evaluate_split, read_options

    run = trained["runs"][("jumprelu", 0)]
    opts = read_options(run["folder"])
    assert opts == run["options"]
    stats = evaluate_split(SAE.load_from_disk(run["folder"]), run["files"], opts, "validation")
    rec = run["records"]["validation"]
    for key in ("tokens", "samples", "explained_variance", "mse", "mean_l0", "dead_fraction"):
        assert stats[key] == pytest.approx(rec[key], rel=1e-9, abs=1e-12), key
