"""report.html of `layerwise compare`: self-contained (figures are embedded base64 PNGs; no script, no network);
every figure also as figures/<stem>.svg, .pdf and .csv beside it (layerwise.core.html).

Every figure puts layers on the relative-depth axis (layer / (num_layers - 1)) so that models of different
depths line up, with one line (one colour) per model.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd
from markupsafe import Markup

from layerwise.compare.inputs import INTERVENTION, POOLED, Result
from layerwise.compare.table import VIEW_ORDER
from layerwise.core.atomic import atomic_write_text
from layerwise.core.html import BASE_CSS, FIGURES_DIR, FigureWriter, figure_legend, panel_figure, report_figure

SIGNIFICANT = 0.05          # probes with p_value <= this are drawn with filled markers
DEPTH_LABEL = "relative depth: layer / (layers − 1)"

TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>layerwise: models compared</title>
<style>
{{ base_css | safe }}
 body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em; color: #222; max-width: 1500px; }
 th { background: #f3f3f3; }
 img { max-width: 100%; }
 .note { background: #fff8e1; border-left: 4px solid #f9a825; padding: 0.3em 1em; }
 details { margin: 0.5em 0; }
</style>
</head>
<body>
<h1>layerwise: {{ models | length }} model(s) compared</h1>
<p>Layers are placed on a relative-depth axis, layer / (layers − 1): 0 is each model's first decoder layer and 1
its last, so that models of different depths line up. The table behind every figure is
<code>comparison.parquet</code>, next to this page.</p>

<h2>Models</h2>
<table id="models"><tr><th>model</th><th>model id</th><th>type</th><th>layers</th><th>layers compared</th>
<th>languages</th><th>probe views</th><th>analysis</th><th>SAEs</th><th>intervention</th><th>status</th><th>outdir</th></tr>
{% for m in models %}<tr><td>{{ m.label }}</td><td>{{ m.model_id }}</td><td>{{ m.model_type }}</td><td>{{ m.num_layers }}</td>
<td>{{ m.layers }}</td><td>{{ m.languages }}</td><td>{{ m.views }}</td><td>{{ m.analysis }}</td><td>{{ m.sae }}</td>
<td>{{ m.intervention }}</td><td>{{ m.status }}</td><td>{{ m.path }}</td></tr>
{% endfor %}</table>

<h2>Notes ({{ notes | length }})</h2>
{% if notes %}<ul id="notes">{% for n in notes %}<li class="note"><strong>{{ n.model }}</strong>: {{ n.message }}</li>{% endfor %}</ul>
{% else %}<p>Every outdir has its analysis and its SAEs.</p>{% endif %}

<h2>Gender probes by relative depth</h2>
{% if figs.probes %}{{ figs.probes.html("probe accuracy vs relative depth") | safe }}
<p>One panel per (language, view), one colour per model. Line: mean held-out probe accuracy; filled markers:
permutation p ≤ {{ significant }}. Shaded band: that model's shuffled-label control, mean ± 2 std. A view a
model does not have is named in the panel.</p>{% else %}<p>No outdir has probe results.</p>{% endif %}

<h2>SAE quality by relative depth</h2>
{% if figs.sae %}{{ figs.sae.html("SAE explained variance and dead latents vs relative depth") | safe }}
<p>Validation split (samples the SAEs were not trained on). One colour per model; dashed and dotted lines are
per-language SAEs, solid ones the pooled SAE of the layer.</p>{% else %}<p>No outdir has SAE metrics.</p>{% endif %}

<h2>Intervention</h2>
{% if figs.intervention %}{{ figs.intervention.html("intervention change vs relative depth") | safe }}{% endif %}
{% if tables.intervention %}<p>Every row of each outdir's <code>{{ intervention_file }}</code>:</p>{{ tables.intervention }}
{% else %}<p>No outdir has <code>{{ intervention_file }}</code>.</p>{% endif %}

<h2>The comparison table</h2>
<details><summary>comparison.parquet ({{ n_rows }} rows{% if n_rows > max_rows %}, the first {{ max_rows }} shown{% endif %})</summary>
{{ tables.comparison }}</details>
</body>
</html>
"""

MAX_ROWS = 5000


PROBES_FIGURE, SAE_FIGURE, INTERVENTION_FIGURE = "probes", "sae", "intervention"   # figures/<stem>.svg, .pdf, .csv


def _figure(rows: int, cols: int, h: float = 2.5):
    """A figure of rows x cols panels, each one paper column wide, with fixed margins in inches."""
    return panel_figure(rows, cols, panel_h=h, top=0.3, bottom=0.5, left=0.6, right=0.15, hspace=0.5, wspace=0.4)


def _legend(fig, handles, labels) -> None:
    figure_legend(fig, handles, labels)


def _ordered(values: Sequence[Any], preferred: Sequence[str] = ()) -> list[str]:
    vals = [str(v) for v in dict.fromkeys(values) if not pd.isna(v)]
    return sorted(vals, key=lambda v: (preferred.index(v) if v in preferred else len(preferred), ""))


def _drawn(df: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """The table behind a figure: the rows drawn, the columns it reads (comparison.parquet's order)."""
    return df[[c for c in columns if c in df.columns]].reset_index(drop=True)


def colors(models: Sequence[str]) -> dict[str, str]:
    return {m: f"C{i % 10}" for i, m in enumerate(models)}


@report_figure(PROBES_FIGURE)
def probe_figure(table: pd.DataFrame, models: Sequence[str]):
    """Probe accuracy vs relative depth per (language, view): one line per model, its control band."""
    d = table[table["view"].notna() & table["probe_accuracy"].notna()]
    if len(d) == 0:
        return None
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    color = colors(models)
    probed = [m for m in models if (d["model"] == m).any()]
    langs, views = _ordered(d["language"]), _ordered(d["view"], VIEW_ORDER)
    fig, axes = _figure(len(langs), len(views))
    for r, lang in enumerate(langs):
        for c, view in enumerate(views):
            ax = axes[r][c]
            ax.set_title(f"{lang} / {view}")
            absent = []
            for m in probed:
                s = d[(d["model"] == m) & (d["language"] == lang) & (d["view"] == view)].sort_values("layer")
                if len(s) == 0:
                    absent.append(m)
                    continue
                x = s["relative_depth"].to_numpy(float)
                acc = s["probe_accuracy"].to_numpy(float)
                ctl, std = s["control_accuracy"].to_numpy(float), s["control_std"].to_numpy(float)
                ax.fill_between(x, ctl - 2 * std, ctl + 2 * std, color=color[m], alpha=0.12, lw=0)
                ax.plot(x, acc, color=color[m], lw=1.3)
                sig = s["p_value"].to_numpy(float) <= SIGNIFICANT
                ax.plot(x[sig], acc[sig], "o", ms=4, color=color[m])
                ax.plot(x[~sig], acc[~sig], "o", ms=4, mfc="white", color=color[m])
            if absent:
                ax.text(0.03, 0.03, "absent: " + ", ".join(absent), fontsize=7, color="0.35", transform=ax.transAxes,
                        bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1.5})
            ax.set_xlim(-0.03, 1.03)
            ax.set_ylim(0.0, 1.02)
            ax.grid(alpha=0.3)
            if r == len(langs) - 1:
                ax.set_xlabel(DEPTH_LABEL)
            if c == 0:
                ax.set_ylabel("held-out probe accuracy")
    handles = [Line2D([], [], color=color[m], lw=1.3, marker="o", ms=4) for m in probed]
    labels = list(probed)
    handles += [Line2D([], [], color="0.3", lw=0, marker="o", ms=4, mfc="white"), Patch(color="0.5", alpha=0.25)]
    labels += [f"p > {SIGNIFICANT}", "shuffled-label control ± 2 std"]
    _legend(fig, handles, labels)
    return fig, _drawn(d, ["model", "language", "view", "layer", "relative_depth", "probe_accuracy", "control_accuracy",
                           "control_std", "p_value"])


@report_figure(SAE_FIGURE)
def sae_figure(table: pd.DataFrame, models: Sequence[str]):
    """SAE explained variance, dead fraction and L0 (validation) vs relative depth, a line per (model, SAE language)."""
    s = table[table["sae_explained_variance"].notna()].drop_duplicates(["model", "layer", "sae_language"])
    if len(s) == 0:
        return None
    color = colors(models)
    panels = (("sae_explained_variance", "explained variance"), ("sae_dead_fraction", "fraction of dead latents"),
              ("sae_mean_l0", "mean L0 (active latents per token)"))
    fig, axes = _figure(1, len(panels))
    sae_langs = [POOLED] + [x for x in _ordered(s["sae_language"]) if x != POOLED]
    styles = ["-", "--", ":", "-."]
    for ax, (col, title) in zip(axes[0], panels):
        for m in models:
            for i, lang in enumerate(sae_langs):
                line = s[(s["model"] == m) & (s["sae_language"] == lang)].sort_values("layer")
                if len(line):
                    ax.plot(line["relative_depth"], line[col], marker="o", ms=3, color=color[m],
                            ls=styles[i % len(styles)], label=m if lang == POOLED else f"{m} ({lang})")
        ax.set_title(title)
        ax.set_xlabel(DEPTH_LABEL)
        ax.set_xlim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    axes[0][1].set_ylim(-0.02, 1.02)
    _legend(fig, *axes[0][0].get_legend_handles_labels())
    return fig, _drawn(s, ["model", "sae_language", "layer", "relative_depth", *(c for c, _ in panels)])


@report_figure(INTERVENTION_FIGURE)
def intervention_figure(table: pd.DataFrame, models: Sequence[str]):
    """Intervention change % and ratio vs relative depth, a line per (model, language)."""
    s = table[table["intervention_change_pct"].notna()].drop_duplicates(["model", "layer", "language"])
    if len(s) == 0:
        return None
    color = colors(models)
    fig, axes = _figure(1, 2)
    langs = _ordered(s["language"])
    for ax, (col, title) in zip(axes[0], (("intervention_change_pct", "gendered words: change vs baseline (%)"),
                                          ("intervention_ratio", "targeted / random change"))):
        for m in models:
            for i, lang in enumerate(langs):
                line = s[(s["model"] == m) & (s["language"] == lang)].sort_values("layer")
                if len(line):
                    ax.plot(line["relative_depth"], line[col], marker="o", ms=4, color=color[m],
                            ls=["-", "--", ":", "-."][i % 4], label=f"{m} ({lang})")
        ax.axhline(0, color="k", lw=0.6, ls=":")
        ax.set_title(title)
        ax.set_xlabel(DEPTH_LABEL)
        ax.set_xlim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    _legend(fig, *axes[0][0].get_legend_handles_labels())
    return fig, _drawn(s, ["model", "language", "layer", "relative_depth", "intervention_change_pct",
                           "intervention_random_mean", "intervention_ratio"])


def _span(layers: Sequence[int]) -> str:
    layers = sorted(set(layers))
    if not layers:
        return "none"
    return f"{layers[0]}–{layers[-1]} ({len(layers)})" if len(layers) > 1 else f"{layers[0]} (1)"


def model_rows(results: Sequence[Result], table: pd.DataFrame) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        t = table[table["model"] == r.label]
        if r.sae is not None and len(r.sae):
            kinds = sorted({f"{a} d_sae={d}" for a, d in zip(r.sae["architecture"], r.sae["d_sae"])})
            langs = sorted(set(map(str, r.sae["language"])))
            sae = f"{len(r.sae)} SAE(s) ({'; '.join(kinds)}; {', '.join(langs)})"
        else:
            sae = "no"
        probes = r.probes is not None and len(r.probes) > 0
        rows.append({
            "label": r.label, "model_id": r.model_id, "model_type": r.model_type, "num_layers": r.num_layers,
            "layers": _span([int(x) for x in t["layer"]]), "languages": ", ".join(_ordered(t["language"])),
            "views": ", ".join(_ordered(t["view"], VIEW_ORDER)) or "none",
            "analysis": f"{len(r.probes)} probes" if probes else "no", "sae": sae,
            "intervention": f"{len(r.intervention)} rows" if r.intervention is not None else "no",
            "status": r.status, "path": str(r.path),
        })
    return rows


def _html_table(df: pd.DataFrame | None, max_rows: int = MAX_ROWS) -> str:
    if df is None or len(df) == 0:
        return ""
    return df.head(max_rows).to_html(index=False, border=0, na_rep="",
                                     float_format=lambda x: f"{x:.4g}" if np.isfinite(x) else str(x))


def write_report(results: Sequence[Result], table: pd.DataFrame, path: str | Path) -> Path:
    path = Path(path)
    models = [r.label for r in results]
    interventions = [r.intervention.assign(model=r.label) for r in results
                     if r.intervention is not None and len(r.intervention)]
    intervention = None
    if interventions:
        intervention = pd.concat(interventions, ignore_index=True)
        intervention = intervention[["model"] + [c for c in intervention.columns if c != "model"]]
    figures = FigureWriter(path.parent / FIGURES_DIR)
    figs = {"probes": probe_figure(table, models, figures=figures), "sae": sae_figure(table, models, figures=figures),
            "intervention": intervention_figure(table, models, figures=figures)}
    env = jinja2.Environment(autoescape=True)
    html = env.from_string(TEMPLATE).render(base_css=BASE_CSS,
        models=model_rows(results, table), figs=figs, significant=SIGNIFICANT,
        notes=[{"model": r.label, "message": n} for r in results for n in r.notes],
        intervention_file=INTERVENTION, n_rows=len(table), max_rows=MAX_ROWS,
        tables={"intervention": Markup(_html_table(intervention)), "comparison": Markup(_html_table(table))},
    )
    atomic_write_text(path, html)
    return path
