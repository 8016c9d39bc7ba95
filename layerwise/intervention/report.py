"""intervention/report.html: self-contained (figures and thumbnails embedded as base64 PNG/JPEG; no script, no
network), readable at one column width; every figure also as intervention/figures/<stem>.svg, .pdf and .csv
(layerwise.core.html).

Sections: the main table (the published table's columns), targeted change against the random runs' distribution,
the 2 × 2 grid (feature language × caption language) of change %, a per-term heatmap (an HTML table, so that
Arabic terms are shaped by the browser), the selected latents, and examples: the image thumbnail and its
baseline → targeted captions with gendered words highlighted (by the lexicon's matcher, word by word).
"""
from __future__ import annotations

import base64
import html
import io
import math
import os
import re
import unicodedata
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd
from markupsafe import Markup

from layerwise.core.html import BASE_CSS, COLUMN_IN, FIGURES_DIR, FigureWriter, panel_figure, report_figure
from layerwise.intervention import outputs, stats
from layerwise.lexicon import count_terms, load_lexicon

EXAMPLES_PER_GROUP = 3
THUMBNAIL = (160, 160)
RANDOM_FIGURE, GRID_FIGURE = "random_runs", "language_grid"     # figures/<stem>.svg, .pdf, .csv

CLASS_COLOURS = {"male": "#cfe0ff", "female": "#ffd7c9", "neutral": "#e4e4e4"}

TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>layerwise intervention report</title>
<style>
{{ base_css | safe }}
 body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em auto; padding: 0 1em;
        color: #222; max-width: 900px; line-height: 1.4; }
 table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.78em; }
 th, td { border: 1px solid #ccc; padding: 0.2em 0.45em; text-align: left; vertical-align: top; }
 th { background: #f3f3f3; }
 td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
 .scroll { overflow-x: auto; max-width: 100%; }
 img { max-width: 100%; }
 mark { padding: 0 0.12em; border-radius: 2px; color: inherit; }
 mark.male { background: #cfe0ff; } mark.female { background: #ffd7c9; } mark.neutral { background: #e4e4e4; }
 .example { display: flex; gap: 0.8em; border-top: 1px solid #ddd; padding: 0.6em 0; }
 .example img { width: 120px; height: auto; flex: none; align-self: flex-start; }
 .example .noimg { width: 120px; flex: none; color: #888; font-size: 0.8em; }
 .caption { margin: 0.15em 0; } .caption b { display: inline-block; min-width: 5.5em; font-weight: 600; }
 .note { color: #8a5a00; font-size: 0.9em; }
 .caveat { background: #fff8e1; border-left: 4px solid #f9a825; padding: 0.5em 1em; }
</style>
</head>
<body>
<h1>Causal intervention: SAE latents and gendered words</h1>
<p>{{ facts.model }} ({{ facts.model_id }}); hook <code>{{ facts.hook }}</code>, scale {{ facts.scale }}
(0 ablates), positions <code>{{ facts.positions }}</code>; k = {{ facts.k }} latents per run; {{ facts.runs }}
random run(s) matched by firing rate; {{ facts.images }} image(s) per condition; greedy captions.
Gendered words = male + female terms of the lexicon{% if facts.lexicons %} ({% for l, sha in facts.lexicons.items() %}{{ l }} {{ sha }}{{ ", " if not loop.last }}{% endfor %}){% endif %},
counted as whole words.</p>
<p class="caveat">Read each targeted change against the random runs: ablating any k latents changes the captions.
<em>Specificity</em> = |Δtargeted| − |mean Δrandom| (percentage points); <em>ratio</em> = |Δtargeted| / |mean Δrandom|;
<em>Δ/caption</em> is the mean per-image difference (targeted − mean of the random runs, gendered words per caption)
with its bootstrap 95 % CI; the Wilcoxon test is on those per-image differences; the empirical p ranks the targeted
change among the random runs ((1 + #{|Δrandom| ≥ |Δtargeted|}) / (1 + runs)).</p>

<h2>Summary</h2>
<div class="scroll">{{ main_table }}</div>
{% if notes %}<ul class="note">{% for n in notes %}<li>{{ n }}</li>{% endfor %}</ul>{% endif %}
<details><summary>every column of summary.parquet</summary><div class="scroll">{{ full_table }}</div></details>

<h2>Targeted against random</h2>
{% if figs.random %}{{ figs.random.html("targeted change against the random runs") | safe }}
<p>Grey: the change of each random run (bars: their histogram); red line: the targeted change; dotted: no change.</p>
{% else %}<p>No random runs.</p>{% endif %}

<h2>Feature language × caption language</h2>
{% if figs.grid %}{{ figs.grid.html("change by feature and caption language") | safe }}
<p>Rows: the language whose samples selected the latents; columns: the language of the generation prompt. Each cell:
the targeted change % and the random runs' mean ± std. Empty cells were not run (<code>--intervention_design</code>).</p>
{% else %}<p>No result.</p>{% endif %}

<h2>Terms</h2>
{% if term_tables %}<p>Occurrences of each lexicon term over the paired captions: baseline, targeted, and the mean per
random run. Shading is per table, by count.</p>
{% for t in term_tables %}<h3>{{ t.title }}</h3><div class="scroll">{{ t.html }}</div>{% endfor %}
{% else %}<p>No lexicon term occurs in the captions.</p>{% endif %}

{% if latent_tables %}<h2>Selected latents</h2>
{% for t in latent_tables %}<p>{{ t.title }}</p><details><summary>the 10 best-ranked</summary><div class="scroll">{{ t.html }}</div></details>{% endfor %}
{% endif %}

<h2>Examples</h2>
<p>Per condition, the images whose gendered-word count changed most (baseline → targeted); gendered words
highlighted: <mark class="male">male</mark> <mark class="female">female</mark> <mark class="neutral">neutral</mark>.</p>
{% for g in examples %}<h3>{{ g.title }}</h3>
{% for e in g.entries %}<div class="example">
{% if e.thumb %}<img alt="{{ e.sample_id }}" src="data:image/jpeg;base64,{{ e.thumb }}">{% else %}<div class="noimg">{{ e.sample_id }}<br>(no image)</div>{% endif %}
<div><div class="caption"><b>baseline</b> <span dir="auto">{{ e.baseline }}</span> ({{ e.g_base }})</div>
<div class="caption"><b>targeted</b> <span dir="auto">{{ e.targeted }}</span> ({{ e.g_targeted }})</div>
{% if e.random %}<div class="caption"><b>random {{ e.random_run }}</b> <span dir="auto">{{ e.random }}</span> ({{ e.g_random }})</div>{% endif %}
</div></div>{% endfor %}
{% else %}<p>No example.</p>{% endfor %}
</body>
</html>
"""


# ------------------------------------------------------------------------------------------------ formatting

def _missing(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, (float, np.floating)) and bool(np.isnan(v)))


def _num(v: Any, fmt: str = "{:.3g}") -> str:
    return "–" if _missing(v) else fmt.format(v)


def _pct(v: Any) -> str:
    return "–" if _missing(v) else f"{v:+.1f} %"


def _group_title(layers: str, feature: str, caption: str) -> str:
    return f"layer{'s' if ',' in str(layers) else ''} {layers}: {feature} latents → {caption} captions"


def main_table(summary: pd.DataFrame) -> str:
    """The published table's columns, compact enough for one column (the full table is in the report's details)."""
    head = ["layers", "latents → captions", "gendered words (base → targeted)", "change", "random (mean ± std)",
            "specificity", "ratio", "Δ/caption [95 % CI]", "Wilcoxon p", "empirical p"]
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for r in summary.to_dict("records"):
        random = "–" if _missing(r["random_mean"]) else (
            f"{r['random_mean']:+.1f} ± {_num(r['random_std'], '{:.1f}')} %")
        ci = "–" if _missing(r["mean_difference"]) else (
            f"{r['mean_difference']:+.3f}<br>[{_num(r['ci_low'], '{:+.3f}')}, {_num(r['ci_high'], '{:+.3f}')}]")
        cells = [html.escape(str(r["layers"])), html.escape(f"{r['feature_language']} → {r['caption_language']}")]
        nums = [html.escape(f"{_num(r['base_count'], '{:d}')} → {_num(r['targeted_count'], '{:d}')}"),
                html.escape(_pct(r["change_pct"])), html.escape(random),
                html.escape(_num(r["specificity"], "{:+.1f} pp")), html.escape(_num(r["ratio"], "{:.1f}×")), ci,
                html.escape(_num(r["wilcoxon_p"])), html.escape(_num(r["empirical_p"]))]
        out.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells)
                   + "".join(f'<td class="num">{c}</td>' for c in nums) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _html_table(df: pd.DataFrame | None) -> str:
    if df is None or len(df) == 0:
        return ""
    return df.to_html(index=False, float_format=lambda x: f"{x:.4g}", border=0, na_rep="")


# ------------------------------------------------------------------------------------------------ highlighting

def _is_word_char(ch: str) -> bool:
    return ch.isalnum() or unicodedata.category(ch).startswith("M") or ch in "'’‘ʼ-\u2010\u2011\u0640\u200c\u200d"


def highlight(text: str, language: str) -> Markup:
    """`text` escaped, with each word the lexicon matches wrapped in <mark class="male|female|neutral"> (title: the
    term). Words are found as the matcher reads them: each whitespace-separated chunk, trimmed of punctuation, is
    counted with count_terms, so a highlight is exactly a counted word."""
    text = "" if _missing(text) else str(text)
    lexicon = load_lexicon(language)
    out = []
    for chunk in re.split(r"(\s+)", text):
        if not chunk or chunk.isspace():
            out.append(html.escape(chunk))
            continue
        start, stop = 0, len(chunk)
        while start < stop and not _is_word_char(chunk[start]):
            start += 1
        while stop > start and not _is_word_char(chunk[stop - 1]):
            stop -= 1
        core = chunk[start:stop]
        counts = count_terms(core, language, lexicon) if core else None
        if not counts or not counts.matches:
            out.append(html.escape(chunk))
            continue
        classes = list(dict.fromkeys(m.cls for m in counts.matches))
        cls = classes[0] if len(classes) == 1 else "neutral"
        title = ", ".join(f"{m.term} ({m.cls})" for m in counts.matches)
        out.append(f'{html.escape(chunk[:start])}<mark class="{cls}" title="{html.escape(title)}">'
                   f'{html.escape(core)}</mark>{html.escape(chunk[stop:])}')
    return Markup("".join(out))


def thumbnail(path: str | os.PathLike | None) -> str | None:
    """Base64 JPEG of the image at `path`, at most THUMBNAIL pixels; None when there is none or it cannot be read."""
    if _missing(path) or not Path(path).is_file():
        return None
    try:
        from PIL import Image

        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail(THUMBNAIL)
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=80)
    except Exception:      # a damaged or unsupported image: the example is shown without it
        return None
    return base64.b64encode(buf.getvalue()).decode("ascii")


# ------------------------------------------------------------------------------------------------ figures

def _figure(rows: int, cols: int, panel_h: float = 2.2, top: float = 0.35, bottom: float = 0.5,
            panel_w: float = COLUMN_IN, left: float = 0.45, wspace: float = 0.3):
    """rows x cols panels of panel_w x panel_h inches (one paper column wide: two panels at most per row)."""
    return panel_figure(rows, cols, panel_w=panel_w, panel_h=panel_h, top=top, bottom=bottom, left=left, right=0.15,
                        hspace=0.75, wspace=wspace)


def _wrap(title: str, width: float) -> str:
    """A panel title on as many lines as it needs at 8 pt in `width` inches (about 0.067 in per character)."""
    import textwrap

    return "\n".join(textwrap.wrap(title, max(20, int(width / 0.067))))


@report_figure(RANDOM_FIGURE)
def random_figure(summary: pd.DataFrame, changes: pd.DataFrame):
    """One panel per summary row: the random runs' change % (points and histogram), the targeted change marked."""
    if summary is None or len(summary) == 0 or changes is None or not (changes["condition"] == outputs.RANDOM).any():
        return None
    n = len(summary)
    cols = 1 if n == 1 else 2
    rows = math.ceil(n / cols)
    fig, axes = _figure(rows, cols, top=0.5)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    keys = []
    for ax, r in zip(axes.ravel(), summary.to_dict("records")):
        keys.append((r["layers"], r["feature_language"], r["caption_language"]))
        ax.set_title(_wrap(_group_title(r["layers"], r["feature_language"], r["caption_language"]), COLUMN_IN - 0.5))
        sel = changes[(changes["layers"] == r["layers"]) & (changes["feature_language"] == r["feature_language"])
                      & (changes["caption_language"] == r["caption_language"])]
        rand = sel[sel["condition"] == outputs.RANDOM]["change_pct"].to_numpy(dtype=float)
        rand = rand[np.isfinite(rand)]
        targeted = r["change_pct"]
        ax.set_yticks([])
        ax.set_xlabel("change of gendered words (%)")
        if not len(rand) and (targeted is None or not np.isfinite(targeted)):
            ax.text(0.5, 0.5, "undefined (no gendered word\nin the baseline)", ha="center", va="center",
                    transform=ax.transAxes)
            ax.set_xticks([])
            continue
        values = np.r_[rand, [targeted] if np.isfinite(targeted) else [], [0.0]]
        lo, hi = float(values.min()), float(values.max())
        pad = max(1.0, 0.08 * (hi - lo))
        if len(rand):
            counts, edges = np.histogram(rand, bins=min(15, max(5, len(rand) // 2)))
            peak = max(1, counts.max())
            ax.bar(edges[:-1], counts / peak, width=np.diff(edges), align="edge", color="0.85", edgecolor="0.7", lw=0.5)
            jitter = np.random.default_rng(0).uniform(0.05, 0.35, len(rand))
            ax.plot(rand, jitter, "o", ms=3, color="0.35", alpha=0.8)
        ax.axvline(0, color="k", lw=0.6, ls=":")
        if np.isfinite(targeted):
            ax.axvline(targeted, color="C3", lw=2)
            ax.text(targeted, 1.08, f" targeted {targeted:+.1f} % ", color="C3", fontsize=7.5,
                    ha="left" if targeted <= (lo + hi) / 2 else "right", va="top")
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(0, 1.15)
    drawn = [key in keys and cond in (outputs.TARGETED, outputs.RANDOM) for key, cond in
             zip(changes[outputs.GROUP].itertuples(index=False, name=None), changes["condition"])]
    return fig, changes[drawn].reset_index(drop=True)


@report_figure(GRID_FIGURE)
def grid_figure(summary: pd.DataFrame):
    """Per layers value, a feature language × caption language matrix of the targeted change %."""
    if summary is None or len(summary) == 0:
        return None
    languages = sorted(set(summary["feature_language"]) | set(summary["caption_language"]))
    layer_values = list(dict.fromkeys(summary["layers"]))
    n = len(layer_values)
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    size = len(languages)
    panel = min(2.6, 0.8 + 0.9 * size)
    fig, axes = _figure(rows, cols, panel_h=panel, top=0.35, bottom=0.55, panel_w=min(COLUMN_IN, panel + 0.9),
                        left=0.85, wspace=0.45)
    finite = summary["change_pct"].to_numpy(dtype=float)
    finite = finite[np.isfinite(finite)]
    vmax = max(1.0, float(np.abs(finite).max())) if len(finite) else 1.0
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    for ax, layers in zip(axes.ravel(), layer_values):
        sub = summary[summary["layers"] == layers]
        matrix = np.full((size, size), np.nan)
        labels = {}
        for r in sub.to_dict("records"):
            i, j = languages.index(r["feature_language"]), languages.index(r["caption_language"])
            matrix[i, j] = r["change_pct"]
            random = "" if pd.isna(r["random_mean"]) else f"\nrandom {r['random_mean']:+.1f}" + (
                "" if pd.isna(r["random_std"]) else f" ± {r['random_std']:.1f}")
            labels[(i, j)] = ("undefined" if pd.isna(r["change_pct"]) else f"{r['change_pct']:+.1f} %") + random
        ax.imshow(np.ma.masked_invalid(matrix), cmap="RdBu_r", vmin=-vmax, vmax=vmax)
        for i in range(size):
            for j in range(size):
                if (i, j) not in labels:
                    ax.text(j, i, "not run", ha="center", va="center", fontsize=7.5, color="0.55")
                    continue
                dark = np.isfinite(matrix[i, j]) and abs(matrix[i, j]) > 0.6 * vmax
                ax.text(j, i, labels[(i, j)], ha="center", va="center", fontsize=7.5, color="white" if dark else "k")
        ax.set_xticks(range(size), languages)
        ax.set_yticks(range(size), languages)
        ax.set_xlabel("caption language")
        ax.set_ylabel("feature language")
        ax.set_title(f"layer{'s' if ',' in str(layers) else ''} {layers}")
    return fig, summary[[*outputs.GROUP, "change_pct", "random_mean", "random_std", "runs", "images"]].reset_index(
        drop=True)


# ------------------------------------------------------------------------------------------------ tables

def _shade(value: float, peak: float) -> str:
    alpha = 0.0 if peak <= 0 or not np.isfinite(value) else min(1.0, value / peak) * 0.75
    return f"background: rgba(40, 100, 200, {alpha:.2f})"


def _baseline_terms(terms: pd.DataFrame, layers: str, feature: str, caption: str) -> pd.DataFrame:
    """The baseline term rows of a group: its own, else its caption language's shared ones (no layers), else
    those of the first layers with baseline rows of that caption language (as stats picks baseline captions)."""
    base = terms[(terms["condition"] == outputs.BASELINE) & (terms["caption_language"] == caption)]
    own = base[(base["layers"] == layers) & (base["feature_language"] == feature)]
    if len(own):
        return own
    shared = base[base["layers"].isna() | (base["layers"] == "")]
    if len(shared):
        return shared
    same = base[base["layers"] == layers]
    if len(same):
        first = same["feature_language"].iloc[0]
        return same[same["feature_language"] == first]
    if len(base):
        first = base[["layers", "feature_language"]].iloc[0]
        return base[(base["layers"] == first["layers"]) & (base["feature_language"] == first["feature_language"])]
    return base


def term_tables(summary: pd.DataFrame, terms: pd.DataFrame | None) -> list[dict[str, Any]]:
    """Per caption language, an HTML heatmap: terms × (group, condition), counts."""
    if terms is None or len(terms) == 0 or summary is None or len(summary) == 0:
        return []
    terms = outputs.frame(terms, outputs.TERMS)
    tables = []
    for caption in dict.fromkeys(summary["caption_language"]):
        cols: list[tuple[str, str, pd.Series]] = []
        for r in summary[summary["caption_language"] == caption].to_dict("records"):
            sel = terms[(terms["layers"] == r["layers"]) & (terms["feature_language"] == r["feature_language"])
                        & (terms["caption_language"] == caption)]
            group = f"L{r['layers']} {r['feature_language']}"
            base = _baseline_terms(terms, r["layers"], r["feature_language"], caption)
            cols.append((group, "baseline", base.groupby(["term", "class"])["count"].sum()))
            cols.append((group, "targeted", sel[sel["condition"] == outputs.TARGETED]
                         .groupby(["term", "class"])["count"].sum()))
            runs = int(r["runs"]) if not pd.isna(r["runs"]) else 0
            rand = sel[sel["condition"] == outputs.RANDOM].groupby(["term", "class"])["count"].sum()
            cols.append((group, "random", rand / runs if runs else rand * np.nan))
        table = pd.concat([c[2].rename(i) for i, c in enumerate(cols)], axis=1).fillna(0.0)
        if len(table) == 0:
            continue
        order = {"male": 0, "female": 1, "neutral": 2}
        table = table.assign(_total=table.sum(axis=1)).reset_index()
        table = table.sort_values(by=["class", "_total", "term"], key=lambda s: s.map(order) if s.name == "class"
                                  else (-s if s.name == "_total" else s)).drop(columns="_total")
        peak = float(table[list(range(len(cols)))].to_numpy().max())
        groups = list(dict.fromkeys(c[0] for c in cols))
        head1 = '<tr><th rowspan="2">term</th><th rowspan="2">class</th>' + "".join(
            f'<th colspan="3">{html.escape(g)}</th>' for g in groups) + "</tr>"
        head2 = "<tr>" + "".join(f"<th>{html.escape(c[1])}</th>" for c in cols) + "</tr>"
        body = []
        for row in table.to_dict("records"):
            cells = "".join(
                f'<td class="num" style="{_shade(row[i], peak)}">'
                f'{_num(row[i], "{:.0f}" if c[1] != "random" else "{:.1f}")}</td>' for i, c in enumerate(cols))
            body.append(f'<tr><td dir="auto">{html.escape(str(row["term"]))}</td>'
                        f'<td><mark class="{html.escape(str(row["class"]))}">{html.escape(str(row["class"]))}</mark>'
                        f"</td>{cells}</tr>")
        tables.append({"title": f"{caption} captions",
                       "html": Markup(f"<table>{head1}{head2}{''.join(body)}</table>")})
    return tables


def latent_tables(latents: pd.DataFrame | None) -> list[dict[str, Any]]:
    if latents is None or len(latents) == 0:
        return []
    out = []
    for (layer, feature), d in latents.groupby(["layer", "feature_language"], sort=True):
        selected = d[d["selected"].astype(bool)] if "selected" in d else d.iloc[0:0]
        dead = int(d["dead"].astype(bool).sum()) if "dead" in d else 0
        sae = ", ".join(sorted({str(s) for s in d["sae"].dropna()})) if "sae" in d else ""
        top = selected.sort_values("rank").head(10)[[c for c in ("latent", "rank", "sign", "difference", "cohens_d",
                                                                "mean_male", "mean_female", "firing_rate")
                                                     if c in d]]
        out.append({"title": f"layer {layer}, {feature} samples (SAE {sae}): {len(selected)} selected of {len(d)} "
                             f"latents, {dead} dead (never selected)",
                    "html": Markup(_html_table(top))})
    return out


def _examples(captions: pd.DataFrame, summary: pd.DataFrame, images: Mapping[str, Any] | None,
              per_group: int) -> list[dict[str, Any]]:
    out = []
    thumbs: dict[str, str | None] = {}
    wanted = {tuple(k) for k in summary[outputs.GROUP].astype(str).itertuples(index=False, name=None)}
    for g in stats.groups(captions):
        if g.key not in wanted or not g.images:
            continue
        gb, gt = g.gendered(outputs.BASELINE), g.gendered(outputs.TARGETED)
        order = sorted(range(len(g.images)), key=lambda i: (-abs(int(gt[i]) - int(gb[i])), g.images[i]))
        first_run = min(g.random) if g.random else None
        items = []
        for i in order[:per_group]:
            sid = g.images[i]
            if images is not None and sid not in thumbs:
                thumbs[sid] = thumbnail(images.get(sid))
            item = {"sample_id": sid, "thumb": thumbs.get(sid),
                    "baseline": highlight(g.baseline["caption"].iloc[i], g.caption_language),
                    "targeted": highlight(g.targeted["caption"].iloc[i], g.caption_language),
                    "g_base": int(gb[i]), "g_targeted": int(gt[i]), "random": None}
            if first_run is not None:
                rand = g.random[first_run]
                item.update(random=highlight(rand["caption"].iloc[i], g.caption_language), random_run=first_run,
                            g_random=int(rand["male"].iloc[i] + rand["female"].iloc[i]))
            items.append(item)
        out.append({"title": _group_title(*g.key), "entries": items})
    return out


def _facts(summary: pd.DataFrame) -> dict[str, Any]:
    def one(col: str) -> str:
        values = [str(v) for v in dict.fromkeys(summary[col].dropna())] if col in summary else []
        return ", ".join(values) if values else "–"

    lexicons = {}
    for lang in dict.fromkeys(summary["caption_language"]):
        try:
            lexicons[lang] = load_lexicon(str(lang)).sha256[:12]
        except Exception:    # an unknown language: the counts would have failed first
            pass
    return {c: one(c) for c in ("model", "model_id", "hook", "scale", "positions", "k", "runs", "images")} | {
        "lexicons": lexicons}


def write_report(summary: pd.DataFrame, captions: pd.DataFrame, terms: pd.DataFrame | None,
                 latents: pd.DataFrame | None, out_path: str | os.PathLike, *,
                 images: Mapping[str, str | os.PathLike] | None = None,
                 examples_per_group: int = EXAMPLES_PER_GROUP) -> Path:
    """Write report.html (atomically) from the stage's tables: `summary` (stats.summarize), `captions` (with their
    counts), `terms`, `latents` (None: no latent section). `images`: sample_id -> image file, for the examples'
    thumbnails (embedded as JPEG; an image that cannot be read is left out)."""
    summary = outputs.frame(summary, outputs.SUMMARY)
    figures = FigureWriter(Path(out_path).parent / FIGURES_DIR)
    changes = stats.run_changes(captions) if len(captions) else None
    notes = [f"{_group_title(r['layers'], r['feature_language'], r['caption_language'])}: {r['note']}"
             for r in summary.to_dict("records") if not pd.isna(r["note"]) and r["note"]]
    env = jinja2.Environment(autoescape=True)
    text = env.from_string(TEMPLATE).render(base_css=BASE_CSS,
        facts=_facts(summary), notes=notes,
        main_table=Markup(main_table(summary)), full_table=Markup(_html_table(summary)),
        figs={"random": random_figure(summary, changes, figures=figures), "grid": grid_figure(summary, figures=figures)},
        term_tables=term_tables(summary, terms), latent_tables=latent_tables(latents),
        examples=_examples(captions, summary, images, examples_per_group) if len(captions) else [],
    )
    return outputs.write_text(out_path, text)
