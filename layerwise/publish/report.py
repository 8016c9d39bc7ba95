"""Self-contained HTML validation report (no network resources: the plot is an embedded PNG)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2

from layerwise.core.atomic import atomic_write_text
from layerwise.core.html import BASE_CSS, figure_png
from layerwise.core.layers import format_layers

TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>layerwise validation report: {{ status }}</title>
<style>
{{ base_css | safe }}
 body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em; color: #222; }
 h1 .status { padding: 0.1em 0.5em; border-radius: 0.3em; color: #fff; }
 .passed { background: #2e7d32; } .FAILED { background: #c62828; }
 table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
 th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
 th { background: #f3f3f3; }
 td.num { text-align: right; font-variant-numeric: tabular-nums; }
 td.ok { color: #2e7d32; font-weight: bold; } td.bad { color: #c62828; font-weight: bold; }
 code { font-size: 0.85em; }
 dl { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; }
 dt { font-weight: bold; }
</style>
</head>
<body>
<h1>layerwise validation <span class="status {{ status }}">{{ status }}</span></h1>
<dl>
 <dt>model</dt><dd>{{ model.id }} @ {{ model.revision }} ({{ model.num_layers }} layers, hidden size {{ model.hidden_size }})</dd>
 <dt>layers</dt><dd>{{ layers | join(", ") }}</dd>
 <dt>languages</dt><dd>{{ languages | join(", ") }}</dd>
 <dt>samples</dt><dd>{{ samples }} distinct samples (every layer file holds each of them once)</dd>
 <dt>settings</dt><dd>token selection {{ token_selection }}, layout {{ layout }}, dtype {{ dtype }}, NaN policy {{ nan_policy }}</dd>
 <dt>files</dt><dd>{{ totals.files }} of {{ totals.expected_files }} expected, {{ human(totals.bytes) }}</dd>
 <dt>created</dt><dd>{{ created_utc }} by layerwise {{ layerwise_version }}</dd>
</dl>

<h2>Checks</h2>
{% if failed_checks == 0 %}<p>All {{ checks | length }} checks passed.</p>
{% else %}<p>{{ failed_checks }} of {{ checks | length }} checks failed ({{ n_problems }} problem(s)).</p>{% endif %}
<table>
 <tr><th>check</th><th>result</th><th>problems</th></tr>
 {% for c in checks %}
 <tr><td><b>{{ c.name }}</b><br><small>{{ c.description }}</small></td>
  <td class="{{ 'ok' if c.passed else 'bad' }}">{{ "passed" if c.passed else "FAILED" }}</td>
  <td>{% if c.problems %}<ul>{% for p in c.problems %}<li><code>{{ p }}</code></li>{% endfor %}</ul>{% endif %}</td></tr>
 {% endfor %}
</table>

<h2>Mean activation norm per layer</h2>
{% if plot %}<img alt="mean L2 norm of stored activation rows per layer, by language and gender" src="data:image/png;base64,{{ plot }}">
{% else %}<p>No activation statistics available.</p>{% endif %}

<h2>Files</h2>
<table>
 <tr><th>layer</th><th>language</th><th>file</th><th>size</th><th>shape</th><th>dtype</th><th>NaN/Inf seen</th>
  <th>non-finite stored</th><th>norm mean</th><th>norm std</th><th>sha256</th></tr>
 {% for f in files %}
 <tr><td class="num">{{ f.layer }}</td><td>{{ f.language }}</td><td>{{ f.file }}</td><td class="num">{{ human(f.bytes) }}</td>
  <td>{{ f.shape or "" }}</td><td>{{ f.dtype or "" }}</td><td class="num">{{ num(f.nan_count) }}</td>
  <td class="num">{{ num(f.nonfinite_stored) }}</td><td class="num">{{ num(f.norm_mean) }}</td>
  <td class="num">{{ num(f.norm_std) }}</td><td><code title="{{ f.sha256 }}">{{ (f.sha256 or "")[:16] }}</code></td></tr>
 {% endfor %}
</table>

{% if run.units %}
<h2>Extraction</h2>
<p>{{ run.units | length }} extraction unit(s) (one job each: a layer group x a language x a sample shard).
Figures summed over units count a sample once in every unit that holds it.</p>
<table id="extraction">
 <tr><th>distinct samples</th><td class="num" id="distinct-samples">{{ samples }}</td><td>in the samplesheet</td></tr>
 <tr><th>sample rows written, summed over units</th><td class="num" id="rows-written">{{ num(run.rows_written) }}</td>
  <td>{% if run.breakdown %}{{ samples }} samples x {{ run.breakdown.languages }} language(s) x {{ run.breakdown.groups }} layer group(s): each unit writes its shard's samples into each of its layer files{% else %}each unit writes its samples into each of its layer files{% endif %}</td></tr>
 <tr><th>of them written by the final attempt of each unit</th><td class="num" id="rows-this-run">{{ num(run.totals.get("samples_this_run")) }}</td>
  <td>the rest came from checkpoints of earlier attempts</td></tr>
 <tr><th>token positions stored, summed over units</th><td class="num">{{ num(run.totals.get("positions_kept")) }}</td><td>per layer file</td></tr>
 <tr><th>job time, summed over units</th><td class="num">{{ num(run.totals.get("seconds")) }} s</td><td>job-seconds, not wall time</td></tr>
 <tr><th>throughput per job-second</th><td class="num">{{ num(run.totals.get("samples_per_s")) }} samples/s</td><td>{{ num(run.totals.get("tokens_per_s")) }} token positions/s</td></tr>
 <tr><th>bytes written, summed over units</th><td class="num">{{ human(run.totals.get("bytes_written")) }}</td><td></td></tr>
 <tr><th>peak host memory of a unit</th><td class="num">{{ human(run.totals.get("peak_host_memory_bytes")) }}</td><td>the largest over units</td></tr>
 <tr><th>peak GPU memory of a unit</th><td class="num">{{ human(run.totals.get("peak_gpu_memory_bytes")) or "none (no GPU)" }}</td><td>the largest over units</td></tr>
</table>
<table id="units">
 <tr><th>unit</th><th>language</th><th>layers</th><th>sample rows written</th><th>of them by the final attempt</th><th>positions</th>
  <th>seconds</th><th>image features</th></tr>
 {% for u in run.units %}
 <tr><td>{{ u.name }}</td><td>{{ u.language }}</td><td>{{ u.layers }}</td><td class="num">{{ num(u.rows_written) }}</td>
  <td class="num">{{ num(u.rows_this_run) }}</td><td class="num">{{ num(u.positions) }}</td><td class="num">{{ num(u.seconds) }}</td>
  <td>{{ u.images }}</td></tr>
 {% endfor %}
</table>

<h2>Image encoding</h2>
<p>The vision tower's image features do not depend on the language or the layers: with the shared image-feature cache,
the first unit of each sample shard computes them and the shard's other units reuse them.</p>
<table id="image-encoding">
 <tr><th>distinct images</th><td class="num" id="distinct-images">{{ num(vision_tower.distinct_images) }}</td><td>in the samplesheet</td></tr>
 <tr><th>image features computed</th><td class="num" id="images-computed">{{ run.images.computed }}</td>
  <td>images run through the vision tower into the cache, by {{ run.images.computing_units }} unit(s){% if run.images.computing_units %} in {{ num(run.images.seconds) }} s{% endif %}</td></tr>
 <tr><th>image features reused from the cache</th><td class="num" id="images-reused">{{ run.images.reused }}</td>
  <td>image lookups, by {{ run.images.reusing_units }} unit(s) that found their shard's features computed by another unit or an earlier run</td></tr>
 <tr><th>images encoded in the extraction pass</th><td class="num" id="images-in-forward">{{ run.images.in_forward }}</td>
  <td>by {{ run.images.uncached_units }} unit(s) without the shared cache (<code>--share_image_features false</code>), each for its own samples</td></tr>
 <tr><th>vision tower, all units</th><td class="num" id="images-encoded">{{ num(vision_tower.images_encoded) }}</td>
  <td>images through the vision tower in this run (equal to the distinct images when each is encoded once; 0 when all came from an earlier run's cache)</td></tr>
</table>
{% endif %}
</body>
</html>
"""


def _human(nbytes: Any) -> str:
    if nbytes is None:
        return ""
    n = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(nbytes)


def _num(value: Any) -> str:
    try:
        import pandas as pd

        if value is None or pd.isna(value):
            return ""
    except (TypeError, ValueError):
        pass
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def norm_plot_png(norms_by_group_df) -> str | None:
    """Base64 PNG: mean norm per layer, one panel per language, one line per gender (None if no data)."""
    if norms_by_group_df is None or len(norms_by_group_df) == 0:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    df = norms_by_group_df.dropna(subset=["norm_mean"])
    if len(df) == 0:
        return None
    languages = list(dict.fromkeys(df["language"]))
    genders = sorted(set(df["gender"]))
    fig = Figure(figsize=(min(4.0 * len(languages), 16.0), 3.4), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(languages), sharey=True, squeeze=False)[0]
    colors = {g: f"C{i}" for i, g in enumerate(genders)}
    for ax, lang in zip(axes, languages):
        sub = df[df["language"] == lang]
        for g in genders:
            part = sub[sub["gender"] == g].sort_values("layer")
            if len(part):
                ax.plot(part["layer"], part["norm_mean"], marker="o", markersize=3, color=colors[g], label=g)
        ax.set_title(lang)
        ax.set_xlabel("layer")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean L2 norm")
    axes[-1].legend(title="gender", fontsize="small")
    fig.tight_layout()
    return figure_png(fig)


def _count(value: Any) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def run_figures(metadata: dict[str, Any]) -> dict[str, Any]:
    """What the report's Extraction and Image encoding sections say, from the metadata's unit records.

    Units write every sample of their shard, so a sum over units counts a sample once per unit
    holding it; `breakdown` says how (languages x layer groups) when the figures add up that way.
    """
    extraction = metadata.get("extraction") or {}
    units = list(extraction.get("units") or [])
    encodings = list((metadata.get("image_encoding") or {}).get("units") or [])
    totals = extraction.get("totals") or {}
    rows_written = sum(_count(u.get("samples")) for u in units)
    languages = {u.get("language") for u in units if u.get("language")}
    groups = {tuple(u["layers"]) for u in units if isinstance(u.get("layers"), list)}
    distinct = _count(metadata.get("samples"))
    breakdown = ({"languages": len(languages), "groups": len(groups)}
                 if units and rows_written == distinct * len(languages) * len(groups) else None)
    hits = [e for e in encodings if e.get("cache_hit") is True]
    fills = [e for e in encodings if e.get("cache_hit") is False]
    computed = sum(_count(e.get("vision_tower_images")) for e in encodings)
    by_unit = {e.get("unit"): e for e in encodings if e.get("unit") is not None}
    rows = []
    for u in units:
        enc = by_unit.get(u.get("unit"))
        if u.get("unit") is None:   # a summary outside a unit folder of the plan: not matched to its image features
            images = f"{_count(u.get('vision_tower_images'))} image(s) through the vision tower"
        elif enc is None:
            images = f"encoded in the extraction pass ({_count(u.get('vision_tower_images'))} image(s))"
        elif enc.get("cache_hit"):
            images = f"reused from the cache ({_count(enc.get('images'))} image(s))"
        else:
            images = f"computed into the cache ({_count(enc.get('vision_tower_images'))} image(s))"
        layers = u.get("layers")
        rows.append({"name": u.get("unit") or u.get("summary_file"), "language": u.get("language"),
                     "layers": format_layers(layers) if isinstance(layers, list) else "",
                     "rows_written": u.get("samples"), "rows_this_run": u.get("samples_this_run"),
                     "positions": u.get("positions_kept"), "seconds": u.get("seconds"), "images": images})
    return {
        "units": rows,
        "totals": totals,
        "rows_written": rows_written,
        "breakdown": breakdown,
        "images": {
            "computed": computed,
            "computing_units": len(fills),
            "seconds": sum(float(e.get("seconds") or 0) for e in fills),
            "reused": sum(_count(e.get("images")) for e in hits),
            "reusing_units": len(hits),
            "in_forward": (sum(_count(u.get("vision_tower_images")) for u in units) - computed) if units else 0,
            "uncached_units": max(0, len(units) - len(encodings)),
        },
    }


def write_report(metadata: dict[str, Any], layers_df, norms_by_group_df, out_path: Path) -> Path:
    """Render the validation report to `out_path` (atomically); returns the path."""
    env = jinja2.Environment(autoescape=True, undefined=jinja2.ChainableUndefined)
    template = env.from_string(TEMPLATE)
    files = [] if layers_df is None else layers_df.to_dict("records")
    checks = metadata.get("checks", [])
    context = dict(metadata)
    context.update(
        files=files,
        plot=norm_plot_png(norms_by_group_df),
        run=run_figures(metadata),
        failed_checks=sum(not c["passed"] for c in checks),
        n_problems=sum(len(c["problems"]) for c in checks),
        human=_human,
        num=_num,
    )
    html = template.render(base_css=BASE_CSS, **context)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_path, html)
    return out_path
