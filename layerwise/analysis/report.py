"""report.html: self-contained (figures are embedded base64 PNGs; no script, no network)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
import pandas as pd
from markupsafe import Markup

from layerwise.analysis import outputs, plots
from layerwise.analysis.views import ALL_VIEW_NAMES
from layerwise.core.html import BASE_CSS

TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>layerwise analysis report</title>
<style>
{{ base_css | safe }}
 body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em; color: #222; max-width: 1500px; }
 th { background: #f3f3f3; }
 td.num { text-align: right; font-variant-numeric: tabular-nums; }
 img { max-width: 100%; }
 .caveat { background: #fff8e1; border-left: 4px solid #f9a825; padding: 0.5em 1em; }
 details { margin: 0.5em 0; }
</style>
</head>
<body>
<h1>layerwise analysis</h1>
<p>Layers {{ facts.layers | join(", ") }}; languages {{ facts.languages | join(", ") }}; classes
{{ facts.classes | join(", ") }}; {{ facts.folds }}-fold stratified CV; {{ facts.permutations }} label permutations;
seed {{ facts.seed }}.</p>
<p class="caveat">A caption that says "man" or "woman" makes gender decodable from caption tokens already at
layer 0: that is lexical leakage, not a learned representation. Compare views (image vs caption vs prompt)
and read every accuracy against its shuffled-label control band.</p>
{% if leak.languages %}<p class="caveat leak" id="label-leakage"><strong>Label leakage.</strong> The labels came from
gendered words in captions the model reads (samplesheet column <code>label_leaks</code>:
{% for lang, n in leak.languages.items() %}{{ lang }} {{ n.leaking }} of {{ n.probed }} probed samples{{ ", " if not loop.last }}{% endfor %}),
{% if leak.views %}so the views that read those captions leak the label ({% for lang, views in leak.views.items() %}{{ lang }}: {{ views | join(", ") }}{{ "; " if not loop.last }}{% endfor %};
marked “label leaks” on their panels and <code>label_leak</code> in the probes table: their probes, directions
and SAE latents can read the word itself){% else %}but none of the probed views reads those captions{% endif %},
while the image view is the clean one: the image tokens come before the caption in causal order and cannot
attend to it.</p>
{% elif leak.known %}<p id="label-leakage">No probed sample's label came from a word in a caption the model reads
(samplesheet column <code>label_leaks</code> empty): no view leaks the label.</p>{% endif %}
{% if facts.nan_excluded %}<p class="caveat" id="nan-excluded"><strong>Samples left out.</strong>
{{ facts.nan_excluded | sum(attribute="samples") }} sample(s) in {{ facts.nan_excluded | length }} layer file(s) had
NaN/Inf values at extraction (<code>nan_counts</code> &gt; 0, NaN policy
{{ facts.nan_excluded | map(attribute="nan_policy") | unique | join(", ") }}): they are not data and are left out of
every probe, direction, cross-lingual comparison, CKA and SAE latent of their layer and language (see the notes;
<code>analysis.json</code> <code>nan_excluded</code> lists them).</p>{% endif %}

<h2>Gender probes</h2>
{% if figs.probes %}<img alt="probe accuracy vs layer" src="data:image/png;base64,{{ figs.probes }}">
<p>Line: mean held-out accuracy (error bar: std over folds). Grey band: shuffled-label control, mean ± 2 std
over permutations. Dotted: majority-class rate.</p>{% else %}<p>No probe results.</p>{% endif %}
<details><summary>probes table ({{ tables.probes | length }} rows)</summary>{{ tables.probes_html }}</details>

<h2>Gender directions</h2>
{% if figs.directions %}<img alt="gender directions" src="data:image/png;base64,{{ figs.directions }}">{% else %}<p>No direction results.</p>{% endif %}
<details><summary>directions table</summary>{{ tables.directions_html }}</details>

<h2>Cross-layer similarity (linear CKA)</h2>
{% if figs.cka %}<img alt="CKA heatmaps" src="data:image/png;base64,{{ figs.cka }}">{% else %}<p>No CKA results.</p>{% endif %}
{% if figs.adjacent %}<img alt="adjacent-layer CKA" src="data:image/png;base64,{{ figs.adjacent }}">{% endif %}

<h2>Cross-lingual similarity</h2>
{% if figs.crosslingual %}<img alt="cross-lingual similarity" src="data:image/png;base64,{{ figs.crosslingual }}">
<p>Matched: a sample's vector in one language with its own vector in the other; mismatched: with another
sample's (seeded derangement). The caption view is drawn thicker.</p>{% else %}<p>No cross-lingual results.</p>{% endif %}
<details><summary>crosslingual table</summary>{{ tables.crosslingual_html }}</details>

{% if has_sae %}
<h2>SAE latents associated with gender</h2>
{% if figs.sae %}<img alt="SAE latents passing BH" src="data:image/png;base64,{{ figs.sae }}">{% endif %}
{% if tables.sae_html %}<p>Latents passing Benjamini-Hochberg (held-out split), best 10 per (layer, language, view):</p>
{{ tables.sae_html }}{% else %}<p>No latent passes the Benjamini-Hochberg threshold.</p>{% endif %}
{% endif %}

<h2>Notes ({{ notes | length }})</h2>
{% if notes %}<table><tr><th>stage</th><th>layer</th><th>language</th><th>view</th><th>note</th></tr>
{% for n in notes %}<tr><td>{{ n.stage }}</td><td>{{ n.layer if n.layer is not none else "" }}</td>
<td>{{ n.language or "" }}</td><td>{{ n.view or "" }}</td><td>{{ n.message }}</td></tr>{% endfor %}</table>
{% else %}<p>Nothing was skipped.</p>{% endif %}
</body>
</html>
"""


def _html_table(df: pd.DataFrame | None, max_rows: int = 2000) -> str:
    if df is None or len(df) == 0:
        return ""
    return df.head(max_rows).to_html(index=False, float_format=lambda x: f"{x:.4g}", border=0, na_rep="")


def _leak_summary(leaks: dict | None, probes: pd.DataFrame | None) -> dict:
    """What the report says about label leakage: the leaking languages (with their sample counts) and,
    per language, the probed views marked `label_leak`; `known` is False without samplesheet label_leaks."""
    languages = {lang: n for lang, n in (leaks or {}).items() if n["leaking"]}
    views: dict[str, list[str]] = {}
    if probes is not None and len(probes) and "label_leak" in probes:
        marked = probes[probes.label_leak.astype(bool)]
        for lang in languages:
            found = sorted(set(marked[marked.language == lang].view), key=ALL_VIEW_NAMES.index)
            if found:
                views[lang] = found
    return {"known": leaks is not None, "languages": languages, "views": views}


def write_report(tables: dict[str, pd.DataFrame], notes: list[dict[str, Any]], facts: dict, out_path: Path) -> Path:
    probes = tables.get(outputs.PROBES)
    dirs = tables.get(outputs.DIRECTIONS)
    cka = tables.get(outputs.CKA)
    cross = tables.get(outputs.CROSSLINGUAL)
    sae = tables.get(outputs.SAE_FEATURES)
    figs = {
        "probes": plots.probe_plot(probes), "directions": plots.direction_plot(dirs),
        "cka": plots.cka_heatmaps(cka), "adjacent": plots.adjacent_cka_plot(cka),
        "crosslingual": plots.crosslingual_plot(cross), "sae": plots.sae_plot(sae),
    }
    sae_top = None
    if sae is not None and len(sae):
        passing = sae[sae.passes_bh]
        if len(passing):
            sae_top = (passing.sort_values("rank").groupby(["layer", "language", "view"], sort=True).head(10)
                       [["layer", "language", "view", "latent", "rank", "auroc", "smd", "q_value", "mean_a", "mean_b",
                         "firing_rate_a", "firing_rate_b"]])
    env = jinja2.Environment(autoescape=True)
    html = env.from_string(TEMPLATE).render(base_css=BASE_CSS,
        facts=facts, figs=figs, notes=notes, has_sae=sae is not None,
        leak=_leak_summary(facts.get("label_leaks"), probes),
        tables={"probes": probes if probes is not None else [],
                "probes_html": Markup(_html_table(probes)),
                "directions_html": Markup(_html_table(dirs)),
                "crosslingual_html": Markup(_html_table(cross)),
                "sae_html": Markup(_html_table(sae_top))},
    )
    return outputs.write_text(out_path, html)
