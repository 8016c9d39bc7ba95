"""The report's figures, as base64 PNG strings (matplotlib, Agg canvas; no display, no network)."""
from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd

VIEW_COLORS = {"image": "C0", "prompt": "C1", "caption": "C2", "all": "C3", "last": "C4"}


def _figure(rows: int, cols: int, w: float = 3.6, h: float = 2.8):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    width, height = min(w * cols, 18.0), min(h * rows, 24.0)
    fig = Figure(figsize=(width, height), dpi=90)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    # fixed margins in inches (tight_layout costs a third of the rendering time)
    fig.subplots_adjust(left=0.75 / width, right=1 - 0.2 / width, bottom=0.5 / height, top=1 - 0.3 / height,
                        hspace=0.55, wspace=0.3)
    return fig, axes


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _integer_x(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _order(values, preferred=("image", "prompt", "caption", "all", "last")):
    vals = list(dict.fromkeys(values))
    return sorted(vals, key=lambda v: (preferred.index(v) if v in preferred else len(preferred), str(v)))


def probe_plot(probes: pd.DataFrame) -> str | None:
    """Accuracy vs layer per (language, view), with the shuffled-label control band (mean +- 2 std)."""
    if probes is None or len(probes) == 0:
        return None
    langs, views = list(dict.fromkeys(probes["language"])), _order(probes["view"])
    fig, axes = _figure(len(langs), len(views))
    for r, lang in enumerate(langs):
        for c, view in enumerate(views):
            ax = axes[r][c]
            d = probes[(probes.language == lang) & (probes.view == view)].sort_values("layer")
            ax.set_title(f"{lang} / {view}", fontsize=9)
            ax.set_ylim(0.3, 1.02)
            ax.grid(alpha=0.3)
            if len(d) == 0:
                ax.text(0.5, 0.5, "not available", ha="center", va="center", transform=ax.transAxes)
                continue
            lo = d.control_accuracy - 2 * d.control_std
            hi = d.control_accuracy + 2 * d.control_std
            ax.fill_between(d.layer, lo, hi, color="0.6", alpha=0.35, label="control ±2 std")
            ax.plot(d.layer, d.control_accuracy, color="0.4", lw=1, ls="--")
            ax.errorbar(d.layer, d.accuracy, yerr=d.accuracy_std, color=VIEW_COLORS.get(view, "C5"), marker="o",
                        ms=3, lw=1.2, capsize=2, label="probe")
            ax.axhline(d.chance.iloc[0], color="k", lw=0.6, ls=":")
            _integer_x(ax)
            if r == len(langs) - 1:
                ax.set_xlabel("layer")
            if c == 0:
                ax.set_ylabel("held-out accuracy")
    axes[0][-1].legend(fontsize="x-small", loc="lower right")
    return _png(fig)


def cka_heatmaps(cka: pd.DataFrame) -> str | None:
    if cka is None or len(cka) == 0:
        return None
    langs, views = list(dict.fromkeys(cka["language"])), _order(cka["view"])
    fig, axes = _figure(len(langs), len(views), 3.4, 3.0)
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
            im = ax.imshow(m.to_numpy(), vmin=0, vmax=1, cmap="viridis", origin="lower")
            ticks = np.arange(len(m.index))
            step = max(1, len(ticks) // 8)
            ax.set_xticks(ticks[::step], [str(x) for x in m.columns[::step]], fontsize=7)
            ax.set_yticks(ticks[::step], [str(x) for x in m.index[::step]], fontsize=7)
            ax.set_xlabel("layer", fontsize=8)
    if im is not None:
        fig.colorbar(im, ax=[a for row in axes for a in row], shrink=0.7, label="linear CKA")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def adjacent_cka_plot(cka: pd.DataFrame) -> str | None:
    if cka is None or len(cka) == 0 or not cka["adjacent"].any():
        return None
    adj = cka[cka["adjacent"]]
    langs = list(dict.fromkeys(adj["language"]))
    fig, axes = _figure(1, len(langs), 4.2, 3.0)
    for ax, lang in zip(axes[0], langs):
        for view in _order(adj["view"]):
            d = adj[(adj.language == lang) & (adj.view == view)].sort_values("layer_a")
            if len(d):
                ax.plot(d.layer_a, d.cka, marker="o", ms=3, color=VIEW_COLORS.get(view, "C5"), label=view)
        ax.set_title(f"{lang}: CKA(layer, next layer)", fontsize=9)
        _integer_x(ax)
        ax.set_xlabel("layer")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize="x-small")
    return _png(fig)


def crosslingual_plot(cross: pd.DataFrame) -> str | None:
    if cross is None or len(cross) == 0:
        return None
    pairs = list(dict.fromkeys(zip(cross.language_a, cross.language_b)))
    fig, axes = _figure(len(pairs), 3, 4.0, 3.0)
    for r, (la, lb) in enumerate(pairs):
        sub = cross[(cross.language_a == la) & (cross.language_b == lb)]
        for view in _order(sub["view"]):
            d = sub[sub.view == view].sort_values("layer")
            col = VIEW_COLORS.get(view, "C5")
            lw = 2.0 if view == "caption" else 1.0
            for ax, prefix in ((axes[r][0], ""), (axes[r][1], "centered_")):
                ax.plot(d.layer, d[f"{prefix}matched_cosine"], color=col, lw=lw, marker="o", ms=3, label=f"{view} matched")
                ax.plot(d.layer, d[f"{prefix}mismatched_cosine"], color=col, lw=lw, ls="--", label=f"{view} mismatched")
            axes[r][2].plot(d.layer, d.cka, color=col, lw=lw, marker="o", ms=3, label=view)
        axes[r][0].set_title(f"{la} vs {lb}: cosine (matched — / mismatched --)", fontsize=8)
        axes[r][1].set_title("centered cosine", fontsize=8)
        axes[r][2].set_title("linear CKA", fontsize=8)
        for ax in axes[r]:
            ax.set_xlabel("layer")
            ax.grid(alpha=0.3)
            _integer_x(ax)
    axes[0][2].legend(fontsize="x-small")
    return _png(fig)


def direction_plot(dirs: pd.DataFrame) -> str | None:
    """Cross-lingual direction cosine (with its shuffled-label control), held-out effect size, transfer."""
    if dirs is None or len(dirs) == 0:
        return None
    fig, axes = _figure(1, 3, 4.0, 3.0)
    styles = ["-", "--", ":", "-."]
    langs = list(dict.fromkeys(dirs.language))
    for view in _order(dirs["view"]):
        col = VIEW_COLORS.get(view, "C5")
        paired = dirs[(dirs.view == view) & dirs.other_language.notna()]
        first = paired.drop_duplicates(["layer"]).sort_values("layer")
        if len(first):
            axes[0][0].plot(first.layer, first.direction_cosine, color=col, marker="o", ms=3, label=view)
            axes[0][0].plot(first.layer, first.direction_cosine_control, color=col, ls="--", lw=0.8)
        for k, lang in enumerate(langs):
            e = dirs[(dirs.view == view) & (dirs.language == lang)].drop_duplicates(["layer"]).sort_values("layer")
            axes[0][1].plot(e.layer, e.heldout_effect_size, color=col, ls=styles[k % 4], label=f"{view} {lang}")
            t = paired[paired.language == lang].sort_values("layer")
            if len(t):
                axes[0][2].plot(t.layer, t.centered_transfer_accuracy, color=col, ls=styles[k % 4],
                                label=f"{view} {lang}→{t.other_language.iloc[0]}")
    axes[0][0].set_title("cross-lingual cosine of the directions (-- control)", fontsize=8)
    axes[0][1].set_title("held-out effect size (Cohen's d)", fontsize=8)
    axes[0][2].set_title("probe transfer, language offset removed", fontsize=8)
    for ax in axes[0]:
        ax.set_xlabel("layer")
        ax.grid(alpha=0.3)
        _integer_x(ax)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="xx-small")
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
