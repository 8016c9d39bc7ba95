"""Self-contained HTML validation report (no network resources: the plot is an embedded PNG)."""
from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import jinja2

from .store import atomic_write_text

TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>layerwise validation report: {{ status }}</title>
<style>
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
 <dt>samples</dt><dd>{{ samples }}</dd>
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

{% if extraction.totals and extraction.totals | length > 1 %}
<h2>Extraction</h2>
<table>
 {% for k, v in extraction.totals.items() %}<tr><th>{{ k }}</th><td class="num">{{ num(v) }}</td></tr>{% endfor %}
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
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


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
        failed_checks=sum(not c["passed"] for c in checks),
        n_problems=sum(len(c["problems"]) for c in checks),
        human=_human,
        num=_num,
    )
    html = template.render(**context)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_path, html)
    return out_path
