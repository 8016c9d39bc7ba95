"""The shell every HTML report of layerwise shares (validation, SAE, analysis, intervention, compare): one base
stylesheet and one way to draw and save a figure, so that each report is self-contained and readable offline (no
script, no network: figures are base64 PNGs in the page) and each figure can go into a paper as it is.

`report_figure(stem)` wraps a drawing function (which returns the figure and the table behind it, or None): it
draws in the publication style (`figure_style`: text of at least 7 pt on panels about one column, 3.3 in, wide)
and `FigureWriter.save` gives the page its PNG and, with a folder, writes `<folder>/<stem>.svg`, `.pdf` (text
kept as text, fonts embedded as TrueType: editable) and `.csv` (the data drawn), with identical bytes on every
run (no dates, fixed SVG ids), each atomically. Nothing else in layerwise calls `savefig`
(tests/unit/test_report_shell.py).
"""
from __future__ import annotations

import base64
import contextlib
import functools
import html as _html
import io
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layerwise.core.atomic import atomic_path

# The rules every report starts from; a report adds only what is its own after them.
BASE_CSS = """
 body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em; color: #222; }
 table { border-collapse: collapse; margin: 1em 0; font-size: 0.8em; }
 th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: left; }
 img { max-width: 100%; }
 figure { margin: 1em 0; }
 figcaption.files { font-size: 0.75em; color: #666; }
"""

FIGURES_DIR = "figures"      # the folder, beside a stage's report.html, of its figures as SVG, PDF and CSV
COLUMN_IN = 3.3              # one column of a two-column paper (inches): the width of one panel
MIN_FONT_PT = 7.0            # no text of a figure is smaller (at 1:1, the size the SVG and PDF are written at)
PNG_DPI = 120                # the page's PNG: 7-8 pt text is 12-13 px
FORMATS = ("svg", "pdf")     # written beside the table, `<stem>.<format>`
TABLE_SUFFIX = ".csv"

# matplotlib rc params of every report figure, set only while one is drawn and saved (never globally)
STYLE: dict[str, Any] = {
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans"],     # shipped with matplotlib: the same glyphs (and bytes) on any machine
    "font.size": 8.0,
    "axes.titlesize": 8.0,
    "axes.labelsize": 8.0,
    "xtick.labelsize": 7.0,
    "ytick.labelsize": 7.0,
    "legend.fontsize": 7.0,
    "legend.title_fontsize": 7.0,
    "figure.titlesize": 9.0,
    "axes.linewidth": 0.6,
    "grid.linewidth": 0.5,
    "lines.linewidth": 1.1,
    "lines.markersize": 3.5,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "xtick.major.size": 2.5,
    "ytick.major.size": 2.5,
    "svg.fonttype": "none",                 # SVG text stays <text> (editable), not glyph paths
    "svg.hashsalt": "layerwise",            # SVG ids from a fixed salt, not a random one: the same bytes every run
    "pdf.fonttype": 42,                     # PDF fonts embedded as TrueType (editable), not Type 3
    "ps.fonttype": 42,
}

# no creation date (identical bytes on every run: later stages are cached by file size), no software URL
SVG_METADATA = {"Date": None, "Creator": None}
PDF_METADATA = {"CreationDate": None, "ModDate": None, "Creator": None}


@contextlib.contextmanager
def figure_style() -> Iterator[None]:
    """The publication style (STYLE) while a figure is drawn and saved; rc params are restored after."""
    import matplotlib

    with matplotlib.rc_context(STYLE):
        yield


def new_figure(width: float, height: float, dpi: float = PNG_DPI):
    """A matplotlib Figure of width x height inches on an Agg canvas (no display, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def panel_figure(rows: int, cols: int, *, panel_w: float = COLUMN_IN, panel_h: float = 2.4, left: float = 0.6,
                 right: float = 0.15, bottom: float = 0.5, top: float = 0.3, hspace: float = 0.6, wspace: float = 0.4,
                 max_width: float = 18.0, max_height: float = 24.0):
    """A figure of rows x cols panels, each about `panel_w` x `panel_h` inches (one column: COLUMN_IN), with fixed
    margins in inches (`top`: room for the panels' titles; `figure_legend` adds the legend's own room above)."""
    width, height = min(panel_w * cols, max_width), min(panel_h * rows + top + bottom, max_height)
    fig = new_figure(width, height)
    axes = fig.subplots(rows, cols, squeeze=False)
    fig.layerwise_margins = {"top": top, "bottom": bottom}
    # fixed margins in inches (tight_layout costs a third of the rendering time)
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height,
                        hspace=hspace, wspace=wspace)
    return fig, axes


def legend_layout(labels, width: float, fontsize: float = 7.0) -> tuple[int, float]:
    """(columns, height in inches) of a legend of `labels` in one row band `width` inches wide (DejaVu Sans: about
    0.6 em per character; handle, padding and column spacing about 0.47 in per entry)."""
    if not labels:
        return 1, 0.0
    entry = max(0.47 + len(str(label)) * 0.6 * fontsize / 72 for label in labels)
    ncol = max(1, min(len(labels), int((width - 0.1) // entry)))
    rows = -(-len(labels) // ncol)
    return ncol, rows * 1.8 * fontsize / 72 + 0.1


def figure_legend(fig, handles, labels, **kwargs) -> None:
    """One legend for the whole figure, above the panels: the figure grows by the legend's height (the panels
    keep their size), in as many columns as fit its width."""
    if not handles:
        return
    width, height = fig.get_size_inches()
    ncol, extra = legend_layout(labels, width)
    margins = getattr(fig, "layerwise_margins", {"top": 0.3, "bottom": 0.5})
    top, bottom = margins["top"] + extra, margins["bottom"]
    height += extra
    fig.set_size_inches(width, height)
    fig.subplots_adjust(top=1 - top / height, bottom=bottom / height)
    fig.layerwise_margins = {"top": top, "bottom": bottom}
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 1 - 0.04 / height), ncol=ncol,
               frameon=False, fontsize=MIN_FONT_PT, **kwargs)


def figure_png(fig, dpi: float | None = None) -> str:
    """A matplotlib figure as a base64 PNG for `<img src="data:image/png;base64,...">` (no software URL in the file)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi if dpi is not None else "figure", metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def figure_bytes(fig, fmt: str) -> bytes:
    """The figure as SVG or PDF: text as text / TrueType, no date, no software URL (the same bytes every run)."""
    buf = io.BytesIO()
    with figure_style():
        fig.savefig(buf, format=fmt, metadata=SVG_METADATA if fmt == "svg" else PDF_METADATA)
    return buf.getvalue()


def table_bytes(table) -> bytes:
    """The table behind a figure (a pandas DataFrame) as CSV: a header, no index, full precision."""
    return table.to_csv(index=False, lineterminator="\n").encode("utf-8")


def small_texts(fig, minimum: float = MIN_FONT_PT) -> list[tuple[str, float]]:
    """(text, size in pt) of every visible, non-empty text of `fig` smaller than `minimum`."""
    from matplotlib.text import Text

    return [(t.get_text(), float(t.get_fontsize())) for t in fig.findobj(Text)
            if t.get_visible() and t.get_text().strip() and float(t.get_fontsize()) < minimum - 1e-9]


@dataclass(frozen=True)
class SavedFigure:
    """A figure of a report: its PNG (base64, for the page) and, when written, the stem of its files."""

    stem: str
    png: str
    written: bool = False

    def __str__(self) -> str:
        return self.png

    def html(self, alt: str) -> str:
        """`<figure>`: the embedded PNG and, when written, the names of its SVG, PDF and table beside the report."""
        img = (f'<img alt="{_html.escape(alt)}" data-figure="{_html.escape(self.stem)}" '
               f'src="data:image/png;base64,{self.png}">')
        if not self.written:
            return f"<figure>{img}</figure>"
        links = " · ".join(f'<a href="{FIGURES_DIR}/{_html.escape(self.stem)}{ext}">{label}</a>'
                           for ext, label in ((".svg", "SVG"), (".pdf", "PDF"), (TABLE_SUFFIX, "data (CSV)")))
        return (f'<figure>{img}<figcaption class="files">{FIGURES_DIR}/{_html.escape(self.stem)}: {links}'
                f"</figcaption></figure>")


class FigureWriter:
    """Saves a report's figures: the PNG for the page and, with `folder`, `<folder>/<stem>.svg`, `.pdf` and `.csv`.

    A stem drawn nothing this time (no data) has its files of an earlier write removed, so that the folder holds
    exactly the report's figures."""

    def __init__(self, folder: str | os.PathLike | None = None):
        self.folder = Path(folder) if folder is not None else None
        self.saved: list[str] = []

    def _paths(self, stem: str) -> list[Path]:
        assert self.folder is not None
        return [self.folder / f"{stem}.{fmt}" for fmt in FORMATS] + [self.folder / f"{stem}{TABLE_SUFFIX}"]

    def save(self, fig, stem: str, table=None) -> SavedFigure:
        png = figure_png(fig, PNG_DPI)
        if self.folder is None:
            return SavedFigure(stem, png)
        files = {f"{stem}.{fmt}": figure_bytes(fig, fmt) for fmt in FORMATS}
        if table is not None:
            files[f"{stem}{TABLE_SUFFIX}"] = table_bytes(table)
        for name, data in files.items():
            _write_bytes(self.folder / name, data)
        for old in self._paths(stem):
            if old.name not in files:
                old.unlink(missing_ok=True)
        self.saved.append(stem)
        return SavedFigure(stem, png, written=True)

    def discard(self, stem: str) -> None:
        """No figure `stem` this time: remove its files of an earlier write."""
        if self.folder is not None:
            for old in self._paths(stem):
                old.unlink(missing_ok=True)


def _write_bytes(path: Path, data: bytes) -> None:
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return                       # already these bytes: left untouched (and its hard links with it)
    except OSError:
        pass
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def report_figure(stem: str) -> Callable:
    """Decorates a drawing function that returns `(figure, table)` (or None: nothing to draw): called, it draws in
    `figure_style()` and returns the SavedFigure (None when nothing was drawn). `figures=` (a FigureWriter; default
    none: the PNG only) writes the SVG, PDF and table too."""
    def decorate(draw: Callable) -> Callable:
        @functools.wraps(draw)
        def wrapper(*args, figures: FigureWriter | None = None, **kwargs) -> SavedFigure | None:
            writer = figures if figures is not None else FigureWriter(None)
            with figure_style():
                drawn = draw(*args, **kwargs)
                if drawn is None:
                    writer.discard(stem)
                    return None
                fig, table = drawn
                return writer.save(fig, stem, table)
        wrapper.stem = stem
        return wrapper
    return decorate
