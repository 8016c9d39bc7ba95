"""Per-latent dashboards (layerwise.sae.dashboard): a planted word latent, the gender ranking against a direct
formula, bounds, a self-contained page, images and token strings or their absence, the CLI and the SAE report.

The checks read the layer files with torch.load and compute the activations with numpy from the encoder's weights,
not with layerwise.sae's code; the page is read with html.parser.
"""
from __future__ import annotations

import base64
import io
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from layerwise.core import schema
from layerwise.core.errors import LayerwiseError
from layerwise.core.html import BASE_CSS
from layerwise.sae.dashboard import (
    DASHBOARD_HTML,
    DASHBOARD_TABLE,
    NO_IMAGE,
    THUMBNAIL_PX,
    dashboard_columns,
    find_metadata_table,
    write_dashboard,
)
from layerwise.sae.options import SAEOptions, SAEOptionsError, option_specs
from tests.support import dashboard_data as dd

LAYER = 3
OPTIONS = dict(device="cpu", batch_size=64, chunk_tokens=100)


# ---------------------------------------------------------------- reading the page and the files independently
class Page(HTMLParser):
    """The example blocks of a dashboard: {latent, sample, language, spans: [(classes, act, text)], html}."""

    def __init__(self):
        super().__init__()
        self.examples: list[dict] = []
        self.sections: list[str] = []
        self.images: list[str] = []
        self._ex, self._depth, self._span = None, 0, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.sections.append(a.get("id", ""))
        if tag == "img":
            self.images.append(a.get("src", ""))
            if self._ex is not None:
                self._ex["imgs"].append(a.get("src", ""))
        if tag == "div":
            if self._ex is not None:
                self._depth += 1
                if "none" in a.get("class", "").split():
                    self._ex["placeholder"] = True
            elif a.get("class") == "ex":
                self._ex = {"latent": int(a["data-latent"]), "sample": a["data-sample"], "language": a["data-language"],
                            "max_position": int(a["data-max-position"]), "spans": [], "imgs": [], "placeholder": False,
                            "text": []}
                self._depth = 1
        if tag == "span" and self._ex is not None and "t" in a.get("class", "").split():
            self._span = {"classes": set(a["class"].split()), "act": float(a.get("data-act", "nan")),
                          "style": a.get("style", ""), "text": ""}

    def handle_endtag(self, tag):
        if tag == "span" and self._span is not None:
            self._ex["spans"].append(self._span)
            self._span = None
        if tag == "div" and self._ex is not None:
            self._depth -= 1
            if self._depth == 0:
                self.examples.append(self._ex)
                self._ex = None

    def handle_data(self, data):
        if self._span is not None:
            self._span["text"] += data
        if self._ex is not None:
            self._ex["text"].append(data)


def read_page(folder: Path) -> tuple[str, Page]:
    text = (folder / DASHBOARD_HTML).read_text(encoding="utf-8")
    page = Page()
    page.feed(text)
    return text, page


def raw_pairs(paths) -> list[dict]:
    """Every (sample, language) pair of the files with its kept rows (not padding, not bos, no NaN sample)."""
    out = []
    for path in paths:
        d = torch.load(path, map_location="cpu", weights_only=True)
        for i, sid in enumerate(d["sample_ids"]):
            n = int(d["lengths"][i])
            if d["layout"] == "padded":
                x, kinds = d["activations"][i, :n], d["token_kinds"][i, :n]
            else:
                a = int(d["lengths"][:i].sum())
                x, kinds = d["activations"][a:a + n], d["token_kinds"][a:a + n]
            keep = (kinds != schema.TOKEN_KINDS["bos"]).numpy()
            if int(d["nan_counts"][i]) > 0 or not keep.any():
                continue
            out.append({"sample_id": sid, "language": d["language"], "gender": d["genders"][i],
                        "x": x.double().numpy()[keep]})
    return out


def numpy_acts(encoder: dd.PlantedEncoder, x: np.ndarray) -> np.ndarray:
    w, b = encoder.W_enc.detach().double().numpy(), encoder.b_enc.detach().double().numpy()
    return np.maximum(x @ w + b, 0.0)


@pytest.fixture(scope="module")
def word_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("dashboard")
    out = root / "outdir"
    ws = dd.write_word_set(out / "layer_checkpoints", layer=LAYER, nan_samples=frozenset({"s021"}))
    tokens = dd.write_tokens_table(out / schema.TOKENS_PARQUET, ws)
    missing = {f"s{i:03d}" for i in range(0, 24, 2) if i % 4 == 0}          # s000, s004, ...: no image anywhere
    moved = {f"s{i:03d}" for i in range(24) if i % 4 == 2}                  # found through image_root only
    samples = dd.write_samples_table(out, ws, root / "images", missing=missing, moved=moved)
    return {"root": root, "outdir": out, "set": ws, "tokens": tokens, "samples": samples, "missing": missing,
            "moved": moved, "paths": [ws.paths["english"], ws.paths["arabic"]]}


@pytest.fixture(scope="module")
def full(word_set):
    """The dashboard with token strings and images, default latent and example counts."""
    folder = word_set["root"] / "full"
    enc = dd.PlantedEncoder()
    summary = write_dashboard(enc, word_set["paths"], folder, SAEOptions(**OPTIONS), tokens=word_set["tokens"],
                              samples=word_set["samples"], sae_dir=f"layer_{LAYER}")
    table = pd.read_parquet(folder / DASHBOARD_TABLE)
    text, page = read_page(folder)
    return {"folder": folder, "summary": summary, "table": table, "text": text, "page": page, "encoder": enc}


# ---------------------------------------------------------------- the planted word
def test_the_word_latent_shows_the_word_highlighted_in_its_top_examples(word_set, full):
    table, page, ws = full["table"], full["page"], word_set["set"]
    assert dd.WORD_LATENT in set(table.latent)
    mine = table[table.latent == dd.WORD_LATENT].sort_values("example")
    # its examples: the pairs holding the word, strongest first (the NaN sample s021 is never one)
    planted = {k: v for k, v in ws.word_pairs.items() if k[0] != "s021"}
    expected = sorted(planted, key=lambda k: -planted[k][1])[:6]
    assert ("s021", "english") in ws.word_pairs and ws.word_pairs[("s021", "english")][1] > \
        min(planted[k][1] for k in expected), "the fixture must put the NaN sample among the strongest"
    assert list(zip(mine.sample_id, mine.example_language)) == expected
    assert mine.example.tolist() == list(range(1, 7))
    assert (mine.max_token == dd.WORD).all() and (mine.max_kind == "caption").all()
    assert mine.max_position.tolist() == [planted[k][0] for k in expected]
    assert np.allclose(mine.example_max, [planted[k][1] - dd.BIAS for k in expected], atol=1e-4)
    blocks = [e for e in page.examples if e["latent"] == dd.WORD_LATENT]
    assert [(e["sample"], e["language"]) for e in blocks] == expected
    for e in blocks:
        top = [s for s in e["spans"] if "max" in s["classes"]]
        assert len(top) == 1 and top[0]["text"].strip() == "girl", e["sample"]
        fired = [s for s in e["spans"] if np.isfinite(s["act"]) and s["act"] != 0]
        assert [s["text"].strip() for s in fired] == ["girl"]                # no other token is highlighted
        others = [s for s in e["spans"] if s not in fired]
        assert others and all("background" not in s["style"] for s in others)
        assert any("off" in s["classes"] and s["text"] == "<bos>" for s in e["spans"])   # bos: left out, shown grey
    # the strongest example is at the latent's largest activation: full intensity
    assert "rgba(255,140,0,1.00)" in [s for s in blocks[0]["spans"] if "max" in s["classes"]][0]["style"]


# ---------------------------------------------------------------- the ranking against a direct formula
def test_gender_ranking_and_rates_match_a_direct_formula(word_set, full):
    enc, table = full["encoder"], full["table"]
    pairs = raw_pairs(word_set["paths"])
    acts = [numpy_acts(enc, p["x"]) for p in pairs]
    means = {g: np.mean([a.mean(0) for a, p in zip(acts, pairs) if p["gender"] == g], axis=0)
             for g in ("male", "female")}
    diff = means["male"] - means["female"]
    every = np.concatenate(acts)
    fires = (every != 0).sum(0)
    alive = fires > 0
    assert not alive[dd.DEAD_LATENT] and alive.sum() == dd.D_SAE - 1
    order = sorted((j for j in range(dd.D_SAE) if alive[j] and diff[j] != 0), key=lambda j: (-abs(diff[j]), j))
    latents = table.drop_duplicates("latent")
    gender = latents[latents.why == "gender"].sort_values("rank")
    assert gender.latent.tolist() == order[:8]
    rate = fires / len(every)
    rest = sorted((j for j in range(dd.D_SAE) if alive[j] and j not in order[:8]), key=lambda j: (-rate[j], j))
    frequent = latents[latents.why == "frequent"].sort_values("rank")
    assert frequent.latent.tolist() == rest[:8]
    for r in latents.itertuples():
        j = r.latent
        assert r.mean_activation_male == pytest.approx(means["male"][j], rel=1e-5, abs=1e-9)
        assert r.mean_activation_female == pytest.approx(means["female"][j], rel=1e-5, abs=1e-9)
        assert r.difference == pytest.approx(diff[j], rel=1e-5, abs=1e-9)
        assert r.firing_rate == pytest.approx(rate[j]) and r.rows == len(every)
        for g in ("male", "female", "unknown"):
            rows = np.concatenate([a for a, p in zip(acts, pairs) if p["gender"] == g])
            assert getattr(r, f"firing_rate_{g}") == pytest.approx((rows != 0).mean(0)[j]), (j, g)
        for lang in ("english", "arabic"):
            rows = np.concatenate([a for a, p in zip(acts, pairs) if p["language"] == lang])
            assert getattr(r, f"firing_rate_lang_{lang}") == pytest.approx((rows != 0).mean(0)[j]), (j, lang)
        assert r.max_activation == pytest.approx(every[:, j].max(), rel=1e-5)
    # each example's largest activation, by the same formula, and the split by sample id
    by_pair = {(p["sample_id"], p["language"]): a for a, p in zip(acts, pairs)}
    for r in table.itertuples():
        assert r.example_max == pytest.approx(by_pair[(r.sample_id, r.example_language)][:, r.latent].max(), rel=1e-5)
    assert set(table.split) <= {"train", "validation"} and list(table.columns) == dashboard_columns(["english", "arabic"])


def test_dead_latents_are_never_chosen_and_the_counts_are_bounded(word_set, tmp_path):
    enc = dd.PlantedEncoder()
    small = write_dashboard(enc, word_set["paths"], tmp_path / "small",
                            SAEOptions(**OPTIONS, dashboard_latents=3, dashboard_examples=2))
    table = pd.read_parquet(tmp_path / "small" / DASHBOARD_TABLE)
    per = table.groupby("latent").size()
    assert (per <= 2).all() and len(per) == 6 == small["latents"]
    assert sorted(table.drop_duplicates("latent").why.value_counts().items()) == [("frequent", 3), ("gender", 3)]
    _, page = read_page(tmp_path / "small")
    assert len(page.sections) == 6 and len(page.examples) == len(table) <= 12
    many = write_dashboard(enc, word_set["paths"], tmp_path / "many", SAEOptions(**OPTIONS, dashboard_latents=50))
    chosen = pd.read_parquet(tmp_path / "many" / DASHBOARD_TABLE).drop_duplicates("latent")
    assert sorted(chosen.latent) == [j for j in range(dd.D_SAE) if j != dd.DEAD_LATENT]   # each alive latent once
    assert many["latents"] == dd.D_SAE - 1 and many["dead_latents"] == 1
    assert many["html_bytes"] < 400_000 and small["html_bytes"] < many["html_bytes"]


def test_zero_latents_write_nothing(word_set, tmp_path):
    enc = dd.PlantedEncoder()
    assert write_dashboard(enc, word_set["paths"], tmp_path / "none", SAEOptions(**OPTIONS, dashboard_latents=0)) is None
    assert not (tmp_path / "none").exists() and enc.calls == 0


# ---------------------------------------------------------------- the page
def test_the_page_is_self_contained_with_small_thumbnails(full):
    text, page = full["text"], full["page"]
    for bad in ("http://", "https://", 'src="/', "<script", "<link", "@import", "url("):
        assert bad not in text, bad
    assert BASE_CSS in text and all(src.startswith("data:image/") for src in page.images)
    thumbs = [src for src in page.images if src.startswith("data:image/jpeg;base64,")]
    assert thumbs
    from PIL import Image

    for src in thumbs:
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as im:
            assert max(im.size) <= THUMBNAIL_PX and im.format == "JPEG"
    assert full["summary"]["html_bytes"] == len(text.encode("utf-8"))


def test_missing_images_get_the_placeholder_and_moved_ones_are_found(word_set, full):
    page, table = full["page"], full["table"]
    shown_missing = shown_moved = 0
    for e in page.examples:
        jpeg = [s for s in e["imgs"] if s.startswith("data:image/jpeg")]
        if e["sample"] in word_set["missing"]:
            assert e["placeholder"] and not jpeg and NO_IMAGE in "".join(e["text"])
            shown_missing += 1
        else:
            assert len(jpeg) == 1 and not e["placeholder"], e["sample"]
            shown_moved += e["sample"] in word_set["moved"]
    assert shown_missing and shown_moved                    # both cases occur among the examples
    for r in table.itertuples():
        if r.sample_id in word_set["missing"]:
            assert pd.isna(r.image)
        else:
            assert r.image == str(word_set["root"] / "images" / f"{r.sample_id}.png")


def test_without_the_token_table_the_ids_are_shown(word_set, tmp_path):
    write_dashboard(dd.PlantedEncoder(), word_set["paths"], tmp_path, SAEOptions(**OPTIONS))
    text, page = read_page(tmp_path)
    assert "token ids are shown" in text and "images are not available" in text
    blocks = [e for e in page.examples if e["latent"] == dd.WORD_LATENT]
    assert blocks
    for e in blocks:
        top = [s for s in e["spans"] if "max" in s["classes"]]
        assert [s["text"] for s in top] == [str(dd.WORD_ID)] and "id" in top[0]["classes"]
        assert e["placeholder"] and not [s for s in e["imgs"] if s.startswith("data:image/jpeg")]
    table = pd.read_parquet(tmp_path / DASHBOARD_TABLE)
    assert (table[table.latent == dd.WORD_LATENT].max_token == str(dd.WORD_ID)).all() and table.image.isna().all()


def test_a_token_table_of_other_files_is_not_used(word_set, tmp_path):
    frame = pd.read_parquet(word_set["tokens"])
    frame["token_id"] = frame["token_id"] + 1                       # not the layer files' token ids
    other = tmp_path / "tokens.parquet"
    frame.to_parquet(other, index=False)
    write_dashboard(dd.PlantedEncoder(), word_set["paths"], tmp_path / "d", SAEOptions(**OPTIONS), tokens=other)
    text, page = read_page(tmp_path / "d")
    assert "no rows matching the layer files" in text
    top = [s for e in page.examples if e["latent"] == dd.WORD_LATENT for s in e["spans"] if "max" in s["classes"]]
    assert top and {s["text"] for s in top} == {str(dd.WORD_ID)}


def test_per_language_sae_uses_its_language_only(word_set, tmp_path):
    write_dashboard(dd.PlantedEncoder(), word_set["paths"], tmp_path, SAEOptions(**OPTIONS, language="arabic"),
                    tokens=word_set["tokens"])
    table = pd.read_parquet(tmp_path / DASHBOARD_TABLE)
    assert set(table.example_language) == {"arabic"} and set(table.language) == {"arabic"}
    assert list(table.columns) == dashboard_columns(["arabic"])


# ---------------------------------------------------------------- options, defaults of the tables, the CLI
def test_the_dashboard_options_are_checked_and_in_the_schema():
    o = SAEOptions()
    assert (o.dashboard_latents, o.dashboard_examples) == (8, 6)
    with pytest.raises(SAEOptionsError, match="dashboard_latents"):
        SAEOptions.from_mapping({"dashboard_latents": -1})
    with pytest.raises(SAEOptionsError, match="dashboard_examples"):
        SAEOptions.from_mapping({"dashboard_examples": 0})
    assert SAEOptions.from_mapping({"dashboard_latents": "0"}).dashboard_latents == 0
    specs = option_specs()
    assert specs["dashboard_latents"]["minimum"] == 0 and specs["dashboard_examples"]["minimum"] == 1
    schema_doc = json.loads((Path(__file__).resolve().parents[2] / "nextflow_schema.json").read_text())
    props = schema_doc["$defs"]["sae_options"]["properties"]
    assert props["sae_dashboard_latents"]["default"] == 8 and props["sae_dashboard_examples"]["default"] == 6


def test_the_tables_are_found_beside_published_layer_files(word_set, tmp_path):
    linked = tmp_path / "activations" / "layer_3_english.pt"
    linked.parent.mkdir()
    linked.symlink_to(word_set["paths"][0])                   # as TRAIN_SAE stages them
    assert find_metadata_table([linked], None, schema.TOKENS_PARQUET, "--tokens") == word_set["tokens"]
    assert find_metadata_table([linked], None, schema.SAMPLES_PARQUET, "--samples") == word_set["samples"]
    outside = tmp_path / "loose.pt"
    outside.write_bytes(word_set["paths"][0].read_bytes())
    assert find_metadata_table([outside], None, schema.TOKENS_PARQUET, "--tokens") is None
    with pytest.raises(LayerwiseError, match="--tokens .*: no such file"):
        find_metadata_table([outside], tmp_path / "nope.parquet", schema.TOKENS_PARQUET, "--tokens")


@pytest.mark.usefixtures("quiet_offline_trainer")
def test_training_writes_the_dashboard_with_the_outdir_tables(word_set, tmp_path, capsys):
    import importlib

    cli = importlib.import_module("layerwise.commands.train_sae")
    common = ["--d-sae", "16", "--k", "4", "--training-tokens", "1024", "--batch-size", "64", "--chunk-tokens", "128",
              "--buffer-tokens", "256", "--device", "cpu", "--norm-estimate-batches", "2", "--prefetch-batches", "0"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cli.main(["--out-dir", str(tmp_path / "sae"), *common, "--dashboard-latents", "2",
                         "--dashboard-examples", "3", *map(str, word_set["paths"])]) == 0
        assert cli.main(["--out-dir", str(tmp_path / "none"), *common, "--language", "english",
                         "--dashboard-latents", "0", str(word_set["paths"][0])]) == 0
        assert cli.main(["--out-dir", str(tmp_path / "stub"), "--stub-layer", str(LAYER)]) == 0
    finally:
        torch.set_num_threads(threads)
    folder = tmp_path / "sae" / f"layer_{LAYER}"
    training = json.loads((folder / "training.json").read_text())
    assert training["dashboard"]["tokens"] == str(word_set["tokens"])
    assert training["dashboard"]["samples"] == str(word_set["samples"])
    table = pd.read_parquet(folder / DASHBOARD_TABLE)
    assert set(table.sae_dir) == {f"layer_{LAYER}"} and 1 <= table.latent.nunique() <= 4
    assert table.groupby("latent").size().max() <= 3
    text, page = read_page(folder)
    assert "token ids are shown" not in text and page.examples
    shown = {s["text"] for e in page.examples for s in e["spans"]}
    assert "<bos>" in shown and all("id" not in s["classes"] for e in page.examples for s in e["spans"])
    assert "dashboard of" in capsys.readouterr().out
    english = tmp_path / "none" / f"layer_{LAYER}_english"
    assert (english / "cfg.json").is_file() and not (english / DASHBOARD_HTML).exists()
    assert json.loads((english / "training.json").read_text())["dashboard"] is None
    assert sorted(p.name for p in (tmp_path / "stub" / f"layer_{LAYER}").iterdir()) == ["cfg.json", "metrics.json"]
    with pytest.raises(LayerwiseError, match="--samples .*: no such file"):
        cli.main(["--out-dir", str(tmp_path / "x"), "--samples", str(tmp_path / "nope.parquet"),
                  str(word_set["paths"][0])])


def test_the_sae_report_links_each_dashboard(tmp_path):
    from layerwise.sae.report import write_report

    root = tmp_path / "sae"
    records = []
    for layer in (0, 1):
        for split in ("train", "validation"):
            records.append({"layer": layer, "language": "pooled", "languages": "english", "architecture": "topk",
                            "d_in": 16, "d_sae": 32, "k": 4, "split": split, "samples": 10, "tokens": 100,
                            "explained_variance": 0.5, "fvu": 0.5, "mse": 0.1, "mean_l0": 4.0, "dead_fraction": 0.0,
                            "tokens_seen": 1000, "epochs_seen": 10.0, "sae_dir": f"layer_{layer}"})
    (root / "layer_1").mkdir(parents=True)
    (root / "layer_1" / DASHBOARD_HTML).write_text("<html></html>")
    text = write_report(records, root / "report.html").read_text()
    assert f'href="layer_1/{DASHBOARD_HTML}"' in text and f"layer_0/{DASHBOARD_HTML}" not in text
    (root / "layer_1" / DASHBOARD_HTML).unlink()
    assert "Per-latent dashboards" not in write_report(records, root / "report.html").read_text()


def test_docs_describe_every_column_and_both_options():
    root = Path(__file__).resolve().parents[2]
    output = (root / "docs" / "output.md").read_text(encoding="utf-8")
    section = output.split("### `sae/layer_{L}[_{language}]/dashboard.parquet`", 1)[1].split("\n## ", 1)[0]
    for column in dashboard_columns(["<language>"]):
        assert f"`{column}`" in section, column
    sae_doc = (root / "docs" / "sae.md").read_text(encoding="utf-8")
    assert "## Per-latent dashboards" in sae_doc and "`dashboard_latents`, `dashboard_examples`" in sae_doc
