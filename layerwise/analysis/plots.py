"""The report's figures, as base64 PNG strings (matplotlib, Agg canvas; no display, no network).

Every panel has its axis labels; line figures share one legend above the panels (not drawn over
the data). Series that are undefined (all NaN, e.g. CKA of a view whose vectors are the same in
every sample) are not drawn and are named in the panel instead of being left blank.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from layerwise.core.html import figure_png

VIEW_COLORS = {"image": "C0", "prompt": "C1", "caption": "C2", "all": "C3", "last": "C4"}
SIGNIFICANT = 0.05          # probes with p_value <= this are drawn with filled markers


def _figure(rows: int, cols: int, w: float = 3.6, h: float = 2.8, top: float = 0.3, bottom: float = 0.5,
            left: float = 0.75, right: float = 0.2):
    """A figure of rows x cols panels with fixed margins in inches (`top`: room for a shared legend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    width, height = min(w * cols, 18.0), min(h * rows + top + bottom - 0.8, 24.0)
    fig = Figure(figsize=(width, height), dpi=90)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    # fixed margins in inches (tight_layout costs a third of the rendering time)
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height,
                        hspace=0.55, wspace=0.35)
    return fig, axes


def _png(fig) -> str:
    return figure_png(fig)


def _integer_x(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _order(values, preferred=("image", "prompt", "caption", "all", "last")):
    vals = list(dict.fromkeys(values))
    return sorted(vals, key=lambda v: (preferred.index(v) if v in preferred else len(preferred), str(v)))


def _defined(values) -> bool:
    return bool(np.isfinite(np.asarray(values, dtype=float)).any())


def _figure_legend(fig, handles, labels) -> None:
    """One legend for the whole figure, centred in the top margin."""
    if handles:
        width, height = fig.get_size_inches()
        ncol = min(len(labels), 6, max(2, int(width // 1.5)))     # about 1.5 in per entry
        fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 1 - 0.04 / height), ncol=ncol,
                   fontsize="small", frameon=False, handlelength=2.2)


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


def probe_plot(probes: pd.DataFrame) -> str | None:
    """Accuracy vs layer per (language, view), with the shuffled-label control band (mean +- 2 std)."""
    if probes is None or len(probes) == 0:
        return None
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    langs, views = list(dict.fromkeys(probes["language"])), _order(probes["view"])
    fig, axes = _figure(len(langs), len(views), top=0.6)
    lo_all = probes.control_accuracy - 2 * probes.control_std
    y_min = max(0.0, min(0.3, float(np.nanmin(np.r_[lo_all.to_numpy(dtype=float), probes.accuracy.to_numpy(dtype=float),
                                                    [0.3]])) - 0.05))
    for r, lang in enumerate(langs):
        for c, view in enumerate(views):
            ax = axes[r][c]
            d = probes[(probes.language == lang) & (probes.view == view)].sort_values("layer")
            if "label_leak" in d and d.label_leak.astype(bool).any():
                # the label's word is in a caption this view reads (report: "Label leakage")
                ax.set_title(f"{lang} / {view}: label leaks", fontsize=9, color="C3", fontweight="bold")
                ax.set_facecolor("#fff3f0")
            else:
                ax.set_title(f"{lang} / {view}", fontsize=9)
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
    return _png(fig)


def cka_heatmaps(cka: pd.DataFrame) -> str | None:
    if cka is None or len(cka) == 0:
        return None
    import matplotlib

    langs, views = list(dict.fromkeys(cka["language"])), _order(cka["view"])
    fig, axes = _figure(len(langs), len(views), 3.4, 3.0, right=1.3)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.85")
    im = None
    for r, lang in enumerate(langs):
        for c, view in enumerate(views):
            ax = axes[r][c]
            d = cka[(cka.language == lang) & (cka.view == view)]
            ax.set_title(f"{lang} / {view}", fontsize=9)
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
        cax = fig.add_axes([1 - 1.15 / width, 0.2, 0.12 / width, 0.6])
        fig.colorbar(im, cax=cax, label="linear CKA")
    return _png(fig)


def adjacent_cka_plot(cka: pd.DataFrame) -> str | None:
    if cka is None or len(cka) == 0 or not cka["adjacent"].any():
        return None
    adj = cka[cka["adjacent"]]
    langs = list(dict.fromkeys(adj["language"]))
    fig, axes = _figure(1, len(langs), 4.2, 3.0, top=0.7)
    for ax, lang in zip(axes[0], langs):
        undefined = []
        for view in _order(adj["view"]):
            d = adj[(adj.language == lang) & (adj.view == view)].sort_values("layer_a")
            if len(d) and _defined(d.cka):
                ax.plot(d.layer_a, d.cka, marker="o", ms=3, color=VIEW_COLORS.get(view, "C5"), label=view)
            elif len(d):
                undefined.append(view)
        ax.set_title(f"{lang}: CKA(layer, next layer)", fontsize=9)
        _integer_x(ax)
        ax.set_xlabel("layer")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        _undefined(ax, undefined)
    axes[0][0].set_ylabel("linear CKA")
    _figure_legend(fig, *_unique_legend(axes[0]))
    return _png(fig)


def crosslingual_plot(cross: pd.DataFrame) -> str | None:
    if cross is None or len(cross) == 0:
        return None
    from matplotlib.lines import Line2D

    pairs = list(dict.fromkeys(zip(cross.language_a, cross.language_b)))
    fig, axes = _figure(len(pairs), 3, 4.0, 3.0, top=0.6)
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
        axes[r][0].set_title(f"{la} vs {lb}: mean cosine", fontsize=9)
        axes[r][1].set_title(f"{la} vs {lb}: cosine after centering", fontsize=9)
        axes[r][2].set_title(f"{la} vs {lb}: linear CKA", fontsize=9)
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
    return _png(fig)


def direction_plot(dirs: pd.DataFrame) -> str | None:
    """Cross-lingual direction cosine (with its shuffled-label control), held-out effect size, transfer."""
    if dirs is None or len(dirs) == 0:
        return None
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    fig, axes = _figure(1, 3, 4.0, 3.0, top=0.85)
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
    axes[0][0].set_title("cosine of the two languages' directions", fontsize=9)
    axes[0][1].set_title("held-out effect size", fontsize=9)
    axes[0][2].set_title("probe transfer (language offset removed)", fontsize=9)
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
    return _png(fig)


def sae_plot(sae: pd.DataFrame) -> str | None:
    if sae is None or len(sae) == 0:
        return None
    counts = sae.drop_duplicates(["layer", "language", "view"])
    fig, axes = _figure(1, 1, 5.0, 3.0)
    ax = axes[0][0]
    for (lang, view), d in counts.groupby(["language", "view"], sort=False):
        d = d.sort_values("layer")
        ax.plot(d.layer, d.n_passing, marker="o", ms=3, color=VIEW_COLORS.get(view, "C5"), label=f"{lang} / {view}")
    ax.set_title("SAE latents passing Benjamini-Hochberg", fontsize=9)
    _integer_x(ax)
    ax.set_xlabel("layer")
    ax.set_ylabel("latents")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small")
    return _png(fig)
