"""The report's figures (matplotlib, Agg canvas; no display, no network), drawn in the shared publication style
and saved by layerwise.core.html: a base64 PNG for the page and, with a FigureWriter, `figures/<stem>.svg`, `.pdf`
and `.csv` (the data drawn). Each function takes `figures=` and returns a SavedFigure, or None without data.

Every panel has its axis labels; line figures share one legend above the panels (not drawn over
the data). Series that are undefined (all NaN, e.g. CKA of a view whose vectors are the same in
every sample) are not drawn and are named in the panel instead of being left blank.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from layerwise.core.html import COLUMN_IN, figure_legend, panel_figure, report_figure

VIEW_COLORS = {"image": "C0", "prompt": "C1", "caption": "C2", "all": "C3", "last": "C4"}
SIGNIFICANT = 0.05          # probes with p_value <= this are drawn with filled markers
# the stems of the figures in figures/ (docs/output.md)
PROBES, DIRECTIONS, CKA, CKA_ADJACENT, CROSSLINGUAL, SAE = (
    "probes", "directions", "cka", "cka_adjacent", "crosslingual", "sae_latents")


def _figure(rows: int, cols: int, w: float = COLUMN_IN, h: float = 2.4, top: float = 0.3, bottom: float = 0.45,
            left: float = 0.6, right: float = 0.15):
    """A figure of rows x cols panels, each w x h inches, with fixed margins in inches."""
    return panel_figure(rows, cols, panel_w=w, panel_h=h, top=top, bottom=bottom, left=left, right=right,
                        hspace=0.5, wspace=0.4)


def _sorted(df: pd.DataFrame, columns, by) -> pd.DataFrame:
    """The table behind a figure: `columns` (those present) of `df`, rows sorted by `by`."""
    return df[[c for c in columns if c in df.columns]].sort_values(by, kind="stable").reset_index(drop=True)


def _integer_x(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _order(values, preferred=("image", "prompt", "caption", "all", "last")):
    vals = list(dict.fromkeys(values))
    return sorted(vals, key=lambda v: (preferred.index(v) if v in preferred else len(preferred), str(v)))


def _defined(values) -> bool:
    return bool(np.isfinite(np.asarray(values, dtype=float)).any())


def _figure_legend(fig, handles, labels) -> None:
    """One legend for the whole figure, above the panels."""
    figure_legend(fig, handles, labels, handlelength=2.2)


def _unique_legend(axes) -> tuple[list, list]:
    seen: dict[str, object] = {}
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, h)
    return list(seen.values()), list(seen)


def _undefined(ax, names) -> None:
    if names:
        ax.text(0.03, 0.03, "undefined (identical vectors\nin every sample): " + ", ".join(names), fontsize=7,
                color="0.35", transform=ax.transAxes, va="bottom",
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1.5})


def _majority_rate(classes: str) -> float:
    """0.5 for 'female:16,male:16': the share of the largest class in a `classes` string."""
    try:
        counts = [int(part.rsplit(":", 1)[1]) for part in str(classes).split(",")]
        return max(counts) / sum(counts)
    except (ValueError, IndexError, ZeroDivisionError):
        return float("nan")


@report_figure(PROBES)
def probe_plot(probes: pd.DataFrame):
    """Accuracy vs layer per (language, view), with the shuffled-label control band (mean +- 2 std)."""
    if probes is None or len(probes) == 0:
        return None
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    langs, views = list(dict.fromkeys(probes["language"])), _order(probes["view"])
    fig, axes = _figure(len(langs), len(views))
    lo_all = probes.control_accuracy - 2 * probes.control_std
    y_min = max(0.0, min(0.3, float(np.nanmin(np.r_[lo_all.to_numpy(dtype=float), probes.accuracy.to_numpy(dtype=float),
                                                    [0.3]])) - 0.05))
    for r, lang in enumerate(langs):
        for c, view in enumerate(views):
            ax = axes[r][c]
            d = probes[(probes.language == lang) & (probes.view == view)].sort_values("layer")
            if "label_leak" in d and d.label_leak.astype(bool).any():
                # the label's word is in a caption this view reads (report: "Label leakage")
                ax.set_title(f"{lang} / {view}: label leaks", color="C3", fontweight="bold")
                ax.set_facecolor("#fff3f0")
            else:
                ax.set_title(f"{lang} / {view}")
            ax.set_ylim(y_min, 1.02)
            ax.grid(alpha=0.3)
            if r == len(langs) - 1:
                ax.set_xlabel("layer")
            if c == 0:
                ax.set_ylabel("held-out accuracy")
            if len(d) == 0:
                ax.text(0.5, 0.5, "not available", ha="center", va="center", transform=ax.transAxes)
                continue
            col = VIEW_COLORS.get(view, "C5")
            lo = d.control_accuracy - 2 * d.control_std
            hi = d.control_accuracy + 2 * d.control_std
            ax.fill_between(d.layer, lo, hi, color="0.6", alpha=0.35, lw=0)
            ax.plot(d.layer, d.control_accuracy, color="0.4", lw=1, ls="--")
            ax.errorbar(d.layer, d.accuracy, yerr=d.accuracy_std, color=col, lw=1.2, capsize=2)
            sig = (d.p_value <= SIGNIFICANT).to_numpy()
            ax.plot(d.layer[sig], d.accuracy[sig], "o", ms=4.5, color=col)
            ax.plot(d.layer[~sig], d.accuracy[~sig], "o", ms=4.5, mfc="white", color=col)
            ax.axhline(d.chance.iloc[0], color="k", lw=0.6, ls=":")
            _integer_x(ax)
    handles = [Line2D([], [], color="0.2", lw=1.2, marker="o", ms=4.5),
               Line2D([], [], color="0.2", lw=0, marker="o", ms=4.5, mfc="white"),
               Patch(color="0.6", alpha=0.35), Line2D([], [], color="0.4", lw=1, ls="--"),
               Line2D([], [], color="k", lw=0.6, ls=":")]
    labels = ["probe (bar: std over folds), p ≤ 0.05", "probe, p > 0.05", "shuffled-label control ± 2 std",
              "control mean", "majority-class rate"]
    _figure_legend(fig, handles, labels)
    return fig, _sorted(probes, ["language", "view", "layer", "accuracy", "accuracy_std", "control_accuracy",
                                 "control_std", "p_value", "chance", "label_leak"], ["language", "view", "layer"])


@report_figure(CKA)
def cka_heatmaps(cka: pd.DataFrame):
    if cka is None or len(cka) == 0:
        return None
    import matplotlib

    langs, views = list(dict.fromkeys(cka["language"])), _order(cka["view"])
    fig, axes = _figure(len(langs), len(views), 2.9, 2.7, right=1.0)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.85")
    im = None
    for r, lang in enumerate(langs):
        for c, view in enumerate(views):
            ax = axes[r][c]
            d = cka[(cka.language == lang) & (cka.view == view)]
            ax.set_title(f"{lang} / {view}")
            if len(d) == 0:
                ax.axis("off")
                continue
            m = d.pivot(index="layer_a", columns="layer_b", values="cka")
            ticks = np.arange(len(m.index))
            step = max(1, len(ticks) // 8)
            if not _defined(m.to_numpy()):
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_facecolor("0.93")
                ax.text(0.5, 0.5, "CKA undefined:\nthe view's vectors are\nidentical in every sample",
                        ha="center", va="center", fontsize=8, color="0.3", transform=ax.transAxes)
                continue
            im = ax.imshow(m.to_numpy(), vmin=0, vmax=1, cmap=cmap, origin="lower")
            ax.set_xticks(ticks[::step], [str(x) for x in m.columns[::step]], fontsize=7)
            ax.set_yticks(ticks[::step], [str(x) for x in m.index[::step]], fontsize=7)
            ax.set_xlabel("layer", fontsize=8)
            ax.set_ylabel("layer", fontsize=8)
    if im is not None:
        width = fig.get_size_inches()[0]
        cax = fig.add_axes([1 - 0.85 / width, 0.2, 0.12 / width, 0.6])
        fig.colorbar(im, cax=cax, label="linear CKA")
    return fig, _sorted(cka, ["language", "view", "layer_a", "layer_b", "cka", "n_samples"],
                        ["language", "view", "layer_a", "layer_b"])


@report_figure(CKA_ADJACENT)
def adjacent_cka_plot(cka: pd.DataFrame):
    if cka is None or len(cka) == 0 or not cka["adjacent"].any():
        return None
    adj = cka[cka["adjacent"]]
    langs = list(dict.fromkeys(adj["language"]))
    fig, axes = _figure(1, len(langs))
    for ax, lang in zip(axes[0], langs):
        undefined = []
        for view in _order(adj["view"]):
            d = adj[(adj.language == lang) & (adj.view == view)].sort_values("layer_a")
            if len(d) and _defined(d.cka):
                ax.plot(d.layer_a, d.cka, marker="o", ms=3, color=VIEW_COLORS.get(view, "C5"), label=view)
            elif len(d):
                undefined.append(view)
        ax.set_title(f"{lang}: CKA(layer, next layer)")
        _integer_x(ax)
        ax.set_xlabel("layer")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        _undefined(ax, undefined)
    axes[0][0].set_ylabel("linear CKA")
    _figure_legend(fig, *_unique_legend(axes[0]))
    return fig, _sorted(adj, ["language", "view", "layer_a", "layer_b", "cka", "n_samples"],
                        ["language", "view", "layer_a"])


@report_figure(CROSSLINGUAL)
def crosslingual_plot(cross: pd.DataFrame):
    if cross is None or len(cross) == 0:
        return None
    from matplotlib.lines import Line2D

    pairs = list(dict.fromkeys(zip(cross.language_a, cross.language_b)))
    fig, axes = _figure(len(pairs), 3)
    views = _order(cross["view"])
    for r, (la, lb) in enumerate(pairs):
        sub = cross[(cross.language_a == la) & (cross.language_b == lb)]
        undefined = []
        for view in views:
            d = sub[sub.view == view].sort_values("layer")
            col = VIEW_COLORS.get(view, "C5")
            lw = 2.0 if view == "caption" else 1.0
            for ax, prefix in ((axes[r][0], ""), (axes[r][1], "centered_")):
                ax.plot(d.layer, d[f"{prefix}matched_cosine"], color=col, lw=lw, marker="o", ms=3)
                ax.plot(d.layer, d[f"{prefix}mismatched_cosine"], color=col, lw=lw, ls="--")
            if len(d) and _defined(d.cka):
                axes[r][2].plot(d.layer, d.cka, color=col, lw=lw, marker="o", ms=3)
            elif len(d):
                undefined.append(view)
        axes[r][0].set_title(f"{la} vs {lb}: mean cosine")
        axes[r][1].set_title(f"{la} vs {lb}: cosine after centering")
        axes[r][2].set_title(f"{la} vs {lb}: linear CKA")
        axes[r][0].set_ylabel("cosine")
        axes[r][1].set_ylabel("cosine")
        axes[r][2].set_ylabel("linear CKA")
        _undefined(axes[r][2], undefined)
        for ax in axes[r]:
            ax.set_xlabel("layer")
            ax.grid(alpha=0.3)
            _integer_x(ax)
    handles = [Line2D([], [], color=VIEW_COLORS.get(v, "C5"), lw=2.0 if v == "caption" else 1.0) for v in views]
    labels = list(views)
    handles += [Line2D([], [], color="0.3", marker="o", ms=3), Line2D([], [], color="0.3", ls="--")]
    labels += ["matched (same sample)", "mismatched (deranged pairs)"]
    _figure_legend(fig, handles, labels)
    return fig, _sorted(cross, ["language_a", "language_b", "view", "layer", "matched_cosine", "mismatched_cosine",
                                "centered_matched_cosine", "centered_mismatched_cosine", "cka", "n_samples"],
                        ["language_a", "language_b", "view", "layer"])


@report_figure(DIRECTIONS)
def direction_plot(dirs: pd.DataFrame):
    """Cross-lingual direction cosine (with its shuffled-label control), held-out effect size, transfer."""
    if dirs is None or len(dirs) == 0:
        return None
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    fig, axes = _figure(1, 3)
    styles = ["-", "--", ":", "-."]
    langs = list(dict.fromkeys(dirs.language))
    views = _order(dirs["view"])
    paired_any = dirs.other_language.notna().any()
    for view in views:
        col = VIEW_COLORS.get(view, "C5")
        paired = dirs[(dirs.view == view) & dirs.other_language.notna()]
        first = paired.drop_duplicates(["layer"]).sort_values("layer")
        if len(first) and _defined(first.direction_cosine):
            lo = first.direction_cosine_control - 2 * first.direction_cosine_control_std
            hi = first.direction_cosine_control + 2 * first.direction_cosine_control_std
            axes[0][0].fill_between(first.layer, lo, hi, color=col, alpha=0.15, lw=0)
            axes[0][0].plot(first.layer, first.direction_cosine, color=col, marker="o", ms=3)
        for k, lang in enumerate(langs):
            e = dirs[(dirs.view == view) & (dirs.language == lang)].drop_duplicates(["layer"]).sort_values("layer")
            axes[0][1].plot(e.layer, e.heldout_effect_size, color=col, ls=styles[k % 4])
            t = paired[paired.language == lang].sort_values("layer")
            if len(t):
                axes[0][2].plot(t.layer, t.centered_transfer_accuracy, color=col, ls=styles[k % 4])
    chance = _majority_rate(dirs.classes.iloc[0])
    if np.isfinite(chance):
        axes[0][2].axhline(chance, color="k", lw=0.6, ls=":")
    axes[0][1].axhline(0, color="k", lw=0.6)
    axes[0][0].set_title("cosine of the two languages' directions")
    axes[0][1].set_title("held-out effect size")
    axes[0][2].set_title("probe transfer (language offset removed)")
    axes[0][0].set_ylabel("cosine")
    axes[0][1].set_ylabel("Cohen's d (test folds)")
    axes[0][2].set_ylabel("accuracy on the other language")
    if not paired_any:
        for ax in (axes[0][0], axes[0][2]):
            ax.text(0.5, 0.5, "one language: nothing to compare", ha="center", va="center", fontsize=8,
                    color="0.3", transform=ax.transAxes)
    for ax in axes[0]:
        ax.set_xlabel("layer")
        ax.grid(alpha=0.3)
        _integer_x(ax)
    handles = [Line2D([], [], color=VIEW_COLORS.get(v, "C5")) for v in views]
    labels = list(views)
    handles += [Line2D([], [], color="0.3", ls=styles[k % 4]) for k in range(len(langs))]
    labels += [f"{lang} (→ other language)" if paired_any else lang for lang in langs]
    if paired_any:
        handles.append(Patch(color="0.5", alpha=0.3))
        labels.append("cosine under shuffled labels ± 2 std")
    if np.isfinite(chance):
        handles.append(Line2D([], [], color="k", lw=0.6, ls=":"))
        labels.append("majority-class rate")
    _figure_legend(fig, handles, labels)
    return fig, _sorted(dirs, ["language", "other_language", "view", "layer", "direction_cosine",
                               "direction_cosine_control", "direction_cosine_control_std", "heldout_effect_size",
                               "centered_transfer_accuracy", "classes"], ["language", "view", "layer"])


@report_figure(SAE)
def sae_plot(sae: pd.DataFrame):
    """Latents passing Benjamini-Hochberg per layer, a line per (language, view) tested."""
    if sae is None or len(sae) == 0:
        return None
    counts = sae.drop_duplicates(["layer", "language", "view"])
    fig, axes = _figure(1, 1)
    ax = axes[0][0]
    for (lang, view), d in counts.groupby(["language", "view"], sort=False):
        d = d.sort_values("layer")
        ax.plot(d.layer, d.n_passing, marker="o", ms=3, color=VIEW_COLORS.get(view, "C5"), label=f"{lang} / {view}",
                ls="-" if lang == counts.language.iloc[0] else "--")
    ax.set_title("SAE latents passing Benjamini-Hochberg")
    _integer_x(ax)
    ax.set_xlabel("layer")
    ax.set_ylabel("latents (held-out split)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    _figure_legend(fig, *_unique_legend([ax]))
    return fig, _sorted(counts, ["language", "view", "layer", "n_passing", "d_sae", "n_selection", "n_heldout"],
                        ["language", "view", "layer"])
