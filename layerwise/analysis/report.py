"""report.html: self-contained (figures are embedded base64 PNGs; no script, no network), and figures/: every
figure as SVG and PDF with the table behind it as CSV (layerwise.core.html)."""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd
from markupsafe import Markup

from layerwise.analysis import outputs, plots
from layerwise.analysis.views import ALL_VIEW_NAMES
from layerwise.core.html import BASE_CSS, FigureWriter

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
{% if figs.probes %}{{ figs.probes.html("probe accuracy vs layer") | safe }}
<p>Line: mean held-out accuracy (error bar: std over folds). Grey band: shuffled-label control, mean ± 2 std
over permutations. Dotted: majority-class rate.</p>{% else %}<p>No probe results.</p>{% endif %}
<details><summary>probes table ({{ tables.probes | length }} rows)</summary>{{ tables.probes_html }}</details>

<h2>Gender directions</h2>
{% if figs.directions %}{{ figs.directions.html("gender directions") | safe }}{% else %}<p>No direction results.</p>{% endif %}
<details><summary>directions table</summary>{{ tables.directions_html }}</details>

<h2>Cross-layer similarity (linear CKA)</h2>
{% if figs.cka %}{{ figs.cka.html("CKA heatmaps") | safe }}{% else %}<p>No CKA results.</p>{% endif %}
{% if figs.adjacent %}{{ figs.adjacent.html("adjacent-layer CKA") | safe }}{% endif %}

<h2>Cross-lingual similarity</h2>
{% if figs.crosslingual %}{{ figs.crosslingual.html("cross-lingual similarity") | safe }}
<p>Matched: a sample's vector in one language with its own vector in the other; mismatched: with another
sample's (seeded derangement). The caption view is drawn thicker.</p>{% else %}<p>No cross-lingual results.</p>{% endif %}
<details><summary>crosslingual table</summary>{{ tables.crosslingual_html }}</details>

{% if has_sae %}
<h2 id="sae">SAE latents associated with gender</h2>
<p id="sae-tests"><strong>Latent tests</strong> (one per layer, language and view with an SAE: every latent tested
on the held-out split, Benjamini-Hochberg{% if sae.alpha is not none %} at q ≤ {{ sae.alpha }}{% endif %}):
{{ sae.tests }} in all: {{ sae.ran }} ran{% if sae.ran %} ({{ sae.with_passing }} with latents passing, {{ sae.passing }}
latent(s) in all){% endif %}, {{ sae.skipped }} skipped.</p>
{% if sae.reasons %}<ul id="sae-skipped">{% for r in sae.reasons %}<li>{{ r.count }} skipped: {{ r.reason }}{% if r.details %}
({% for d, n in r.details %}{{ d }}{% if r.details | length > 1 %}: {{ n }}{% endif %}{{ "; " if not loop.last }}{% endfor %}){% endif %}
— {{ r.where }}.{% if r.hint %} {{ r.hint }}{% endif %}</li>{% endfor %}</ul>{% endif %}
{% if sae.other %}<ul id="sae-notes">{% for r in sae.other %}<li>{{ r.message }}{% if r.count > 1 %} ({{ r.count }} times){% endif %} — {{ r.where }}</li>{% endfor %}</ul>{% endif %}
{% if figs.sae %}{{ figs.sae.html("SAE latents passing BH") | safe }}{% endif %}
{% if tables.sae_html %}<p>Latents passing Benjamini-Hochberg (held-out split), best 10 per (layer, language, view):</p>
{{ tables.sae_html }}{% elif sae.ran %}<p>No latent passes the Benjamini-Hochberg threshold in the {{ sae.ran }} test(s) that ran.</p>
{% else %}<p>No latent test ran, so no latent could pass Benjamini-Hochberg.</p>{% endif %}
{% endif %}

<h2>Notes ({{ notes | length }})</h2>
{% if sae.summarised %}<p>{{ sae.summarised }} note(s) of the SAE latent tests are summarised in
<a href="#sae">their section</a> (analysis.json lists every note).</p>{% endif %}
{% if notes %}<table><tr><th>stage</th><th>layer</th><th>language</th><th>view</th><th>note</th></tr>
{% for n in notes %}<tr><td>{{ n.stage }}</td><td>{{ n.layer if n.layer is not none else "" }}</td>
<td>{{ n.language or "" }}</td><td>{{ n.view or "" }}</td><td>{{ n.message }}</td></tr>{% endfor %}</table>
{% elif not sae.summarised %}<p>Nothing was skipped.</p>{% endif %}
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


SKIPPED = "SAE associations skipped: "      # run.py's note of an SAE latent test that did not run
_DETAIL = re.compile(r"^(?P<reason>.*?)\s*\((?P<detail>[^()]*)\)$")


def _span(values) -> str:
    """'0–5' for consecutive layers, else '0, 2, 7'."""
    vals = sorted({int(v) for v in values})
    if not vals:
        return ""
    if len(vals) > 2 and vals == list(range(vals[0], vals[-1] + 1)):
        return f"{vals[0]}–{vals[-1]}"
    return ", ".join(map(str, vals))


def _where(notes: list[dict[str, Any]]) -> str:
    """Where a group of notes was made: their layers, languages and views."""
    parts = []
    layers = [n["layer"] for n in notes if n.get("layer") is not None]
    if layers:
        parts.append(f"layer{'s' if len(set(layers)) > 1 else ''} {_span(layers)}")
    for key, name in (("language", "language"), ("view", "view")):
        vals = list(dict.fromkeys(str(n[key]) for n in notes if n.get(key)))
        if vals:
            parts.append(f"{name}{'s' if len(vals) > 1 else ''} {', '.join(vals)}")
    return "; ".join(parts) or "the whole run"


def sae_summary(sae: pd.DataFrame | None, notes: list[dict[str, Any]], alpha: float | None = None) -> dict[str, Any]:
    """What the SAE section says once: how many latent tests (one per layer, language and view with an SAE) ran,
    how many found latents passing Benjamini-Hochberg, how many were skipped, grouped by reason with counts (a
    reason's varying detail in parentheses, e.g. the class counts, counted apart), and the SAE stage's other
    notes grouped by message. `summarised`: the notes it stands for (left out of the Notes table)."""
    ran = with_passing = passing = 0
    if sae is not None and len(sae):
        groups = sae.drop_duplicates(["layer", "language", "view"])
        ran = len(groups)
        n_passing = pd.to_numeric(groups["n_passing"], errors="coerce").fillna(0)
        with_passing, passing = int((n_passing > 0).sum()), int(n_passing.sum())
    sae_notes = [n for n in notes if n.get("stage") == "sae"]
    by_reason: dict[str, list[tuple[dict, str | None]]] = {}
    other: dict[str, list[dict]] = {}
    for n in sae_notes:
        msg = str(n.get("message", ""))
        if msg.startswith(SKIPPED):
            why = msg[len(SKIPPED):].strip()
            m = _DETAIL.match(why)
            reason, detail = (m["reason"], m["detail"]) if m else (why, None)
            by_reason.setdefault(reason, []).append((n, detail))
        else:
            other.setdefault(msg, []).append(n)
    reasons = []
    for reason, items in sorted(by_reason.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        details = Counter(d for _, d in items if d)
        reasons.append({
            "reason": reason, "count": len(items), "where": _where([n for n, _ in items]),
            "details": sorted(details.items(), key=lambda kv: (-kv[1], kv[0])),
            "hint": ("A test needs at least 4 labelled samples of each class, split (stratified) into selection "
                     "and held-out parts of at least 4 each (the analysis option sae_heldout_fraction); with an "
                     "SAE's split.json only its validation samples count (the SAE stage's validation_fraction)."
                     if reason.startswith("too few samples") else None)})
    skipped = sum(r["count"] for r in reasons)
    return {"tests": ran + skipped, "ran": ran, "with_passing": with_passing, "passing": passing,
            "skipped": skipped, "reasons": reasons, "alpha": alpha,
            "other": [{"message": m, "count": len(ns), "where": _where(ns)} for m, ns in other.items()],
            "summarised": len(sae_notes)}


def write_report(tables: dict[str, pd.DataFrame], notes: list[dict[str, Any]], facts: dict, out_path: Path) -> Path:
    """Write report.html and, beside it, figures/ (every figure as SVG, PDF and its table as CSV)."""
    out_path = Path(out_path)
    probes = tables.get(outputs.PROBES)
    dirs = tables.get(outputs.DIRECTIONS)
    cka = tables.get(outputs.CKA)
    cross = tables.get(outputs.CROSSLINGUAL)
    sae = tables.get(outputs.SAE_FEATURES)
    figures = FigureWriter(out_path.parent / outputs.FIGURES)
    figs = {
        "probes": plots.probe_plot(probes, figures=figures),
        "directions": plots.direction_plot(dirs, figures=figures),
        "cka": plots.cka_heatmaps(cka, figures=figures), "adjacent": plots.adjacent_cka_plot(cka, figures=figures),
        "crosslingual": plots.crosslingual_plot(cross, figures=figures), "sae": plots.sae_plot(sae, figures=figures),
    }
    sae_top = None
    if sae is not None and len(sae):
        passing = sae[sae.passes_bh.astype(bool)]
        if len(passing):
            sae_top = (passing.sort_values("rank").groupby(["layer", "language", "view"], sort=True).head(10)
                       [["layer", "language", "view", "latent", "rank", "auroc", "smd", "q_value", "mean_a", "mean_b",
                         "firing_rate_a", "firing_rate_b"]])
    has_sae = sae is not None
    summary = sae_summary(sae, notes, facts.get("sae_alpha")) if has_sae else {"summarised": 0}
    shown = [n for n in notes if not (has_sae and n.get("stage") == "sae")]
    env = jinja2.Environment(autoescape=True)
    html = env.from_string(TEMPLATE).render(base_css=BASE_CSS,
        facts=facts, figs=figs, notes=shown, has_sae=has_sae, sae=summary,
        leak=_leak_summary(facts.get("label_leaks"), probes),
        tables={"probes": probes if probes is not None else [],
                "probes_html": Markup(_html_table(probes)),
                "directions_html": Markup(_html_table(dirs)),
                "crosslingual_html": Markup(_html_table(cross)),
                "sae_html": Markup(_html_table(sae_top))},
    )
    return outputs.write_text(out_path, html)
