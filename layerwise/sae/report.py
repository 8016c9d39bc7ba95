"""sae/report.html: the SAE metrics by layer (explained variance, MSE, L0, dead latents), self-contained; the figure
also as sae/figures/metrics.svg, .pdf and .csv (layerwise.core.html); links to each SAE's per-latent dashboard."""
from __future__ import annotations

import html
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from layerwise.core.html import BASE_CSS, FIGURES_DIR, FigureWriter, figure_legend, panel_figure, report_figure
from layerwise.sae.dashboard import DASHBOARD_HTML
from layerwise.sae.metrics import METRIC_COLUMNS

PANELS = (("explained_variance", "explained variance"), ("mse", "MSE per element"),
          ("mean_l0", "mean L0 (active latents per token)"), ("dead_fraction", "fraction of dead latents"))
METRICS_FIGURE = "metrics"          # sae/figures/metrics.svg, .pdf, .csv


@report_figure(METRICS_FIGURE)
def metrics_plot(records: Sequence[dict[str, Any]]):
    """One panel per metric, a line per (language, split) against the layer (and the table behind it)."""
    if not records:
        return None
    import pandas as pd
    from matplotlib.ticker import MaxNLocator

    fig, axes = panel_figure(2, 2, panel_h=2.3, top=0.3, bottom=0.45, hspace=0.55, wspace=0.4)
    axes = axes.ravel()
    series: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        series.setdefault((r["language"], r["split"]), []).append(r)
    for ax, (col, title) in zip(axes, PANELS):
        for i, ((lang, split), rows) in enumerate(sorted(series.items())):
            rows = sorted(rows, key=lambda r: r["layer"])
            ax.plot([r["layer"] for r in rows], [r[col] for r in rows], marker="o", ms=3,
                    linestyle="-" if split == "validation" else "--", color=f"C{i // 2}", label=f"{lang} / {split}")
        ax.set_title(title)
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    figure_legend(fig, *axes[0].get_legend_handles_labels())
    columns = ["layer", "language", "split", "sae_dir"] + [c for c, _ in PANELS]
    table = pd.DataFrame([{c: r.get(c) for c in columns} for r in records], columns=columns)
    return fig, table.sort_values(["layer", "language", "split"], kind="stable").reset_index(drop=True)


def _table(records: Sequence[dict[str, Any]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in METRIC_COLUMNS)
    body = []
    for r in sorted(records, key=lambda r: (r["layer"], r["language"], r["split"])):
        cells = []
        for c in METRIC_COLUMNS:
            v = r[c]
            cells.append(f'<td class="num">{v:.4g}</td>' if isinstance(v, float) else f"<td>{html.escape(str(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _notes(records: Sequence[dict[str, Any]]) -> str:
    """The training notes of each SAE (metrics.json `notes`: samples left out for NaN/Inf values, few
    optimizer steps), once per SAE folder; empty without notes."""
    seen: dict[str, tuple[Any, list[str]]] = {}
    for r in sorted(records, key=lambda r: (r["layer"], r["language"])):
        if r.get("notes") and r["sae_dir"] not in seen:
            seen[r["sae_dir"]] = (r.get("steps"), list(r["notes"]))
    if not seen:
        return ""
    rows = "".join(f"<tr><td>{html.escape(str(d))}</td><td>{html.escape(str(steps if steps is not None else ''))}</td>"
                   f"<td>{'<br>'.join(html.escape(n) for n in notes)}</td></tr>" for d, (steps, notes) in seen.items())
    return (f'<h2 id="notes">Notes ({len(seen)} SAE(s))</h2>\n<table><tr><th>SAE</th><th>optimizer steps</th>'
            f"<th>note</th></tr>{rows}</table>")


def _dashboards(records: Sequence[dict[str, Any]], root: Path) -> str:
    """Links to each SAE folder's dashboard.html (relative: `layer_{L}[_{language}]/dashboard.html`), for the folders
    that have one; empty when none has."""
    folders = sorted({r["sae_dir"] for r in records}, key=lambda d: (len(d), d))
    links = [f'<a href="{html.escape(d)}/{DASHBOARD_HTML}">{html.escape(d)}</a>' for d in folders
             if (root / d / DASHBOARD_HTML).is_file()]
    if not links:
        return ""
    return (f'<h2 id="dashboards">Per-latent dashboards</h2>\n<p>The latents most associated with gender and the most '
            f"frequent ones of each SAE: top examples with image and tokens, activation histogram, firing rate by "
            f"gender and language. {' · '.join(links)}</p>")


def write_report(records: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    path = Path(path)
    fig = metrics_plot(records, figures=FigureWriter(path.parent / FIGURES_DIR))
    arch = sorted({f"{r['architecture']} d_sae={r['d_sae']}" + (f" k={r['k']}" if r["k"] else "") for r in records})
    text = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>layerwise SAE report</title>
<style>
{BASE_CSS}
 body {{ max-width: 1400px; }}
 th {{ background: #f3f3f3; }} td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
 img {{ max-width: 100%; }}
</style></head><body>
<h1>Sparse autoencoders by layer</h1>
<p>{len({(r['layer'], r['language']) for r in records})} SAE(s): {html.escape('; '.join(arch))}. Validation rows come from
samples never used in training (split by sample: split.json in each folder). Explained variance is
1 - SSE / total variance of the split (reconstructing every row by the mean scores 0).</p>
{fig.html("SAE metrics by layer") if fig else '<p>No SAE metrics.</p>'}
{_dashboards(records, path.parent)}
{_notes(records)}
<h2>Metrics (sae/metrics.parquet)</h2>
{_table(records)}
</body></html>
"""
    from layerwise.core.atomic import atomic_write_text

    atomic_write_text(path, text)
    return path
