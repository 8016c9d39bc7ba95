"""`layerwise compare` on small fake outdirs of models with different depths: the table's rows, relative depths and
joined values (computed here independently), notes for missing parts, errors, and a self-contained report."""
from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from layerwise import commands
from layerwise.commands import compare as cli
from layerwise.compare import inputs, table
from layerwise.core.errors import LayerwiseError

# The columns the real stages write, copied from their owners (test_copied_columns_are_the_owners' checks it):
# layerwise/analysis/outputs.py PROBE_COLUMNS and layerwise/sae/metrics.py METRIC_COLUMNS.
PROBE_COLUMNS = ["layer", "language", "view", "accuracy", "accuracy_std", "control_accuracy", "control_std",
                 "control_q95", "p_value", "chance", "n_samples", "classes", "n_folds", "n_permutations",
                 "not_converged", "label_leak"]
METRIC_COLUMNS = ["layer", "language", "languages", "architecture", "d_in", "d_sae", "k", "split", "samples",
                  "tokens", "explained_variance", "fvu", "mse", "mean_l0", "dead_fraction", "tokens_seen",
                  "epochs_seen", "sae_dir"]
LANGS = ["english", "arabic"]


def test_copied_columns_are_the_owners_and_cover_what_compare_reads():
    from layerwise.analysis.outputs import PROBE_COLUMNS as probes
    from layerwise.sae.metrics import METRIC_COLUMNS as metrics

    assert PROBE_COLUMNS == list(probes)
    assert METRIC_COLUMNS == list(metrics)
    for needed, optional in (inputs.PROBE_COLUMNS,):
        assert set(needed) | set(optional) <= set(PROBE_COLUMNS)
    for needed, optional in (inputs.SAE_COLUMNS,):
        assert set(needed) | set(optional) <= set(METRIC_COLUMNS)


def test_every_column_is_documented():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "output.md").read_text(encoding="utf-8")
    section = doc[doc.index("## `comparison.parquet`"):]
    for column in table.COLUMNS:
        assert f"`{column}`" in section, column
    for column in inputs.INTERVENTION_COLUMNS[0] + inputs.INTERVENTION_COLUMNS[1]:
        assert f"`{column}`" in section, column


# ------------------------------------------------------------------------------------------------ fake outdirs

def acc(layer: int, num_layers: int, view: str, lang: str) -> float:
    return round(0.5 + 0.4 * layer / num_layers + (0.02 if view == "caption" else 0.0) + (0.01 if lang == "arabic" else 0), 6)


def ev(layer: int, lang: str, split: str) -> float:
    return round(0.95 - 0.01 * layer - (0.1 if split == "train" else 0.0) - (0.02 if lang == "arabic" else 0.0), 6)


def make_outdir(root: Path, name: str, *, model_id: str, model_type: str, num_layers: int, layers: list[int],
                views: tuple[str, ...] = ("image", "caption"), probes: bool = True, sae: str | None = "pooled",
                status: str = "passed") -> Path:
    out = root / name
    (out / "layer_checkpoints").mkdir(parents=True)
    meta = {"status": status, "run_name": "fake_run", "created_utc": "2025-01-01T00:00:00Z", "layerwise_version": "0.1.0",
            "model": {"id": model_id, "revision": "main", "num_layers": num_layers, "hidden_size": 16,
                      "model_type": model_type},
            "layers": layers, "languages": LANGS, "samples": 8, "token_selection": "all", "layout": "padded",
            "dtype": "bfloat16", "nan_policy": "zero", "files": [], "published": [], "checks": []}
    (out / "extraction_metadata.json").write_text(json.dumps(meta))
    if probes:
        rows = [{"layer": layer, "language": lang, "view": view, "accuracy": acc(layer, num_layers, view, lang),
                 "accuracy_std": 0.05, "control_accuracy": 0.5, "control_std": 0.03, "control_q95": 0.55,
                 "p_value": 0.01 if layer else 0.4, "chance": 0.5, "n_samples": 8, "classes": "female:4,male:4",
                 "n_folds": 2, "n_permutations": 5, "not_converged": 0, "label_leak": view == "caption"}
                for lang in LANGS for layer in layers for view in views]
        (out / "analysis").mkdir()
        pd.DataFrame(rows, columns=PROBE_COLUMNS).to_parquet(out / "analysis" / "probes.parquet", index=False)
    if sae:
        sae_langs = ["pooled"] if sae == "pooled" else LANGS
        rows = [{"layer": layer, "language": lang, "languages": "english,arabic", "architecture": "topk", "d_in": 16,
                 "d_sae": 64, "k": 8, "split": split, "samples": 4, "tokens": 40, "explained_variance": ev(layer, lang, split),
                 "fvu": 1 - ev(layer, lang, split), "mse": 0.1, "mean_l0": 8.0 + layer, "dead_fraction": 0.01 * layer,
                 "tokens_seen": 1000, "epochs_seen": 2.0, "sae_dir": f"layer_{layer}"}
                for layer in layers for lang in sae_langs for split in ("train", "validation")]
        (out / "sae").mkdir()
        pd.DataFrame(rows, columns=METRIC_COLUMNS).to_parquet(out / "sae" / "metrics.parquet", index=False)
    return out


@pytest.fixture
def three(tmp_path):
    """gemma: 34 layers, pooled SAEs; qwen: 28 layers, no image view, per-language SAEs; llava: 32 layers, neither."""
    gemma = make_outdir(tmp_path, "results_gemma", model_id="google/gemma-3-4b-it", model_type="gemma3", num_layers=34,
                        layers=[0, 11, 22, 33])
    qwen = make_outdir(tmp_path, "results_qwen", model_id="Qwen/Qwen2-VL-7B-Instruct", model_type="qwen2_vl",
                       num_layers=28, layers=[0, 9, 27], views=("caption",), sae="per_language")
    llava = make_outdir(tmp_path, "results_llava", model_id="llava-hf/llava-1.5-7b-hf", model_type="llava",
                        num_layers=32, layers=[0, 31], probes=False, sae=None, status="incomplete")
    return gemma, qwen, llava


def run_compare(out: Path, *args) -> pd.DataFrame:
    assert cli.main(["--out", str(out), *map(str, args)]) == 0
    return pd.read_parquet(out / "comparison.parquet")


# ------------------------------------------------------------------------------------------------ the table

def test_rows_relative_depths_and_joined_values(three, tmp_path, capsys):
    gemma, qwen, llava = three
    out = tmp_path / "cmp"
    df = run_compare(out, "--label", "gemma", gemma, qwen, "--label", "llava", llava)
    printed = capsys.readouterr().out

    assert list(df.columns) == list(table.COLUMNS)
    assert list(dict.fromkeys(df.model)) == ["gemma", "results_qwen", "llava"]   # order given; default: folder name

    # expected rows, built independently: probes per (layer, language, view); no probe -> one row, view empty
    expected = {("gemma", layer, lang, view) for layer in (0, 11, 22, 33) for lang in LANGS for view in ("image", "caption")}
    expected |= {("results_qwen", layer, lang, "caption") for layer in (0, 9, 27) for lang in LANGS}
    expected |= {("llava", layer, lang, None) for layer in (0, 31) for lang in LANGS}
    got = [(r.model, r.layer, r.language, None if pd.isna(r.view) else r.view) for r in df.itertuples()]
    assert len(got) == len(set(got)) == len(expected) and set(got) == expected

    depth = {("gemma", 0): 0.0, ("gemma", 11): 1 / 3, ("gemma", 22): 2 / 3, ("gemma", 33): 1.0,
             ("results_qwen", 0): 0.0, ("results_qwen", 9): 1 / 3, ("results_qwen", 27): 1.0,
             ("llava", 0): 0.0, ("llava", 31): 1.0}
    num_layers = {"gemma": 34, "results_qwen": 28, "llava": 32}
    model_type = {"gemma": "gemma3", "results_qwen": "qwen2_vl", "llava": "llava"}
    for r in df.itertuples():
        assert r.relative_depth == pytest.approx(depth[(r.model, r.layer)], abs=1e-12)
        assert r.num_layers == num_layers[r.model] and r.model_type == model_type[r.model]
        if r.model != "llava":
            assert r.probe_accuracy == pytest.approx(acc(r.layer, r.num_layers, r.view, r.language))
            assert r.p_value == (0.01 if r.layer else 0.4) and r.label_leak == (r.view == "caption")
            assert r.n_samples == 8 and r.control_accuracy == 0.5 and r.control_std == 0.03
        else:
            assert pd.isna(r.probe_accuracy) and pd.isna(r.sae_explained_variance) and pd.isna(r.sae_language)

    # SAE quality of the row's layer, validation split: gemma's pooled SAE on both languages, qwen's own per language
    g = df[df.model == "gemma"]
    assert set(g.sae_language) == {"pooled"}
    for r in g.itertuples():
        assert r.sae_explained_variance == pytest.approx(ev(r.layer, "pooled", "validation"))
        assert r.sae_mean_l0 == 8.0 + r.layer and r.sae_dead_fraction == pytest.approx(0.01 * r.layer)
        assert r.sae_architecture == "topk" and r.sae_d_sae == 64
    q = df[df.model == "results_qwen"]
    assert (q.sae_language == q.language).all()
    for r in q.itertuples():
        assert r.sae_explained_variance == pytest.approx(ev(r.layer, r.language, "validation"))
    assert df.intervention_change_pct.isna().all()

    # types as documented
    assert str(df.layer.dtype) == "int64" and str(df.num_layers.dtype) == "int64"
    assert str(df.relative_depth.dtype) == "float64" and str(df.n_samples.dtype) == "Int64"

    # notes: the parts llava lacks, and its unverified status; gemma and qwen have none
    assert "note: llava: no analysis: analysis/probes.parquet not found" in printed
    assert "note: llava: no SAEs: sae/metrics.parquet not found" in printed
    assert "note: llava: extraction_metadata.json says status 'incomplete'" in printed
    assert "note: gemma" not in printed and "note: results_qwen" not in printed


def test_the_report_is_self_contained_with_embedded_figures(three, tmp_path):
    out = tmp_path / "cmp"
    run_compare(out, *three)
    html = (out / "report.html").read_text(encoding="utf-8")
    assert not re.search(r"https?:", html, re.I) and "<script" not in html.lower() and "<link" not in html.lower()
    sources = re.findall(r'src="([^"]*)"', html)
    assert len(sources) >= 2 and all(s.startswith("data:image/png;base64,") for s in sources)   # probes, SAEs
    for s in sources:
        assert base64.b64decode(s.split(",", 1)[1]).startswith(b"\x89PNG\r\n\x1a\n")
    assert "probe accuracy vs relative depth" in html and "SAE explained variance" in html
    models = html[html.index('<table id="models">'):]
    models = models[:models.index("</table>")]
    for text in ("results_gemma", "google/gemma-3-4b-it", "Qwen/Qwen2-VL-7B-Instruct", "llava-hf/llava-1.5-7b-hf",
                 "gemma3", "qwen2_vl", "<td>34</td>", "<td>28</td>", "<td>32</td>"):
        assert text in models, text
    assert "no analysis: analysis/probes.parquet not found" in html and "no SAEs" in html
    assert not list(out.glob(".*"))      # atomic writes leave no temporary file


def test_no_report_writes_only_the_table(three, tmp_path):
    out = tmp_path / "cmp"
    run_compare(out, "--no-report", *three[:2])
    assert sorted(p.name for p in out.iterdir()) == ["comparison.parquet"]


# ------------------------------------------------------------------------------------------------ errors

def test_a_folder_that_is_not_a_result_is_an_error_naming_it(three, tmp_path, capsys):
    stray = tmp_path / "not_a_result"
    stray.mkdir()
    (stray / "probes.parquet").write_bytes(b"")
    out = tmp_path / "cmp"
    with pytest.raises(LayerwiseError, match=r"not_a_result is not a layerwise result: it has no extraction_metadata.json"):
        cli.main(["--out", str(out), str(three[0]), str(stray)])
    with pytest.raises(SystemExit) as exc:           # as bin/layerwise-compare runs it: one ERROR line, status 2
        commands.run("compare", ["--out", str(out), str(three[0]), str(tmp_path / "missing")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("ERROR: ") and "missing: no such folder" in err and "Traceback" not in err
    assert not out.exists()                          # nothing written


def test_a_layer_beyond_the_model_is_an_error(tmp_path):
    bad = make_outdir(tmp_path, "bad", model_id="m", model_type="gemma3", num_layers=4, layers=[0, 3])
    probes = pd.read_parquet(bad / "analysis" / "probes.parquet")
    probes.loc[0, "layer"] = 4
    probes.to_parquet(bad / "analysis" / "probes.parquet", index=False)
    with pytest.raises(LayerwiseError, match=r"layer\(s\) 4 are not layers of the model \(m: 4 layers, 0-3\)"):
        cli.main(["--out", str(tmp_path / "cmp"), str(bad)])


def test_labels_name_the_outdir_that_follows_and_must_differ(three, tmp_path):
    gemma, qwen, _ = three
    p = pytest.importorskip("argparse").ArgumentParser()
    p.add_argument("--out")
    p.add_argument("--label")
    p.add_argument("outdirs", nargs="+")
    assert cli.split_labels(p, ["a", "--label", "B", "b", "--out", "o", "c", "--label=D", "d"]) == (
        ["a", "b", "--out", "o", "c", "d"], [None, "B", None, "D"])
    with pytest.raises(SystemExit):                  # a trailing --label names nothing
        cli.split_labels(p, ["a", "--label", "B"])
    with pytest.raises(LayerwiseError, match="the label 'x' names two outdirs"):
        cli.main(["--out", str(tmp_path / "o1"), "--label", "x", str(gemma), "--label", "x", str(qwen)])
    with pytest.raises(LayerwiseError, match="is given twice"):
        cli.main(["--out", str(tmp_path / "o2"), str(gemma), str(gemma) + "/"])
    with pytest.raises(LayerwiseError, match="is one of the outdirs compared"):
        cli.main(["--out", str(gemma), str(gemma), str(qwen)])
    # two outdirs with the same folder name: the paths as given tell them apart
    other = make_outdir(tmp_path / "elsewhere", "results_gemma", model_id="g2", model_type="gemma3", num_layers=34,
                        layers=[0])
    df = run_compare(tmp_path / "o3", gemma, other)
    assert list(dict.fromkeys(df.model)) == [str(gemma), str(other)]


# ------------------------------------------------------------------------------------------------ intervention

def test_intervention_rows_of_one_layer_and_language_are_joined(three, tmp_path, capsys):
    gemma = three[0]
    summary = pd.DataFrame([
        {"layers": "11", "feature_language": "english", "caption_language": "english", "condition": "within",
         "hook": "residual", "k": 100, "runs": 25, "change_pct": -40.0, "random_mean": -5.0, "random_std": 2.0,
         "specificity": 35.0, "ratio": 8.0, "empirical_p": 0.04, "wilcoxon_p": 0.001},
        {"layers": "22", "feature_language": "arabic", "caption_language": "arabic", "condition": "within",
         "hook": "residual", "k": 100, "runs": 25, "change_pct": -20.0, "random_mean": -4.0, "random_std": 1.0,
         "specificity": 16.0, "ratio": 5.0, "empirical_p": 0.04, "wilcoxon_p": 0.01},
        {"layers": "22", "feature_language": "english", "caption_language": "arabic", "condition": "cross",
         "hook": "residual", "k": 100, "runs": 25, "change_pct": -1.0, "random_mean": -1.0, "random_std": 1.0,
         "specificity": 0.0, "ratio": 1.0, "empirical_p": 0.9, "wilcoxon_p": 0.8},
        {"layers": "11,22", "feature_language": "english", "caption_language": "english", "condition": "combined",
         "hook": "residual", "k": 100, "runs": 25, "change_pct": -60.0, "random_mean": -6.0, "random_std": 2.0,
         "specificity": 54.0, "ratio": 10.0, "empirical_p": 0.04, "wilcoxon_p": 0.0001},
    ])
    (gemma / "intervention").mkdir()
    summary.to_parquet(gemma / "intervention" / "summary.parquet", index=False)
    out = tmp_path / "cmp"
    df = run_compare(out, gemma, three[1])
    printed = capsys.readouterr().out

    joined = df[df.intervention_change_pct.notna()]
    assert {(r.layer, r.language, r.view) for r in joined.itertuples()} == {
        (11, "english", "image"), (11, "english", "caption"), (22, "arabic", "image"), (22, "arabic", "caption")}
    for r in joined.itertuples():
        want = summary.iloc[0] if r.layer == 11 else summary.iloc[1]
        assert (r.intervention_change_pct, r.intervention_ratio, r.intervention_k, r.intervention_condition) == (
            want.change_pct, want.ratio, want.k, want.condition)
    assert "1 intervention row(s) hook several layers together" in printed
    assert "1 cross-language intervention row(s)" in printed
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "intervention change vs relative depth" in html and "combined" in html and "11,22" in html


def test_ambiguous_or_malformed_intervention_summaries_are_notes(tmp_path, capsys):
    a = make_outdir(tmp_path, "a", model_id="m", model_type="gemma3", num_layers=4, layers=[0, 3])
    b = make_outdir(tmp_path, "b", model_id="m2", model_type="gemma3", num_layers=6, layers=[0, 5])
    (a / "intervention").mkdir()
    pd.DataFrame({"layers": [3, 3], "condition": ["k100", "k200"], "change_pct": [-1.0, -2.0],
                  "ratio": [1.0, 2.0]}).to_parquet(a / "intervention" / "summary.parquet", index=False)
    (b / "intervention").mkdir()
    pd.DataFrame({"layer": [5], "change": [1.0]}).to_parquet(b / "intervention" / "summary.parquet", index=False)
    df = run_compare(tmp_path / "cmp", a, b)
    printed = capsys.readouterr().out
    assert df.intervention_change_pct.isna().all()
    assert "note: a: 2 intervention rows for layer 3 (conditions: k100, k200): ambiguous" in printed
    assert "note: b: intervention results not compared:" in printed and "lacks the column(s) layers, change_pct, ratio" in printed


def test_single_layer_reads_the_forms_of_layers():
    assert [inputs.single_layer(v) for v in (10, "10", [10], (10,), "10,17", [10, 17], None, 10.0, "x")] == [
        10, 10, 10, 10, None, None, None, 10, None]
