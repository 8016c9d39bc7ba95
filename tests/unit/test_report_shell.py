"""One shell for every HTML report: one base stylesheet and one figure embedding (layerwise/core/html.py)."""
from __future__ import annotations

import base64
from pathlib import Path

from layerwise.core.html import BASE_CSS, figure_png

ROOT = Path(__file__).resolve().parents[2]
REPORTS = ["layerwise/publish/report.py", "layerwise/sae/report.py", "layerwise/analysis/report.py",
           "layerwise/intervention/report.py", "layerwise/compare/report.py"]


def test_a_figure_is_an_embeddable_png_without_a_software_url():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 1))
    FigureCanvasAgg(fig)
    fig.subplots().plot([0, 1], [1, 0])
    data = base64.b64decode(figure_png(fig))
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and b"matplotlib.org" not in data


def test_every_report_uses_the_shell_and_nothing_else_saves_figures():
    for rel in REPORTS:
        text = (ROOT / rel).read_text(encoding="utf-8")
        assert "BASE_CSS" in text, f"{rel} does not start from the shared stylesheet"
    savers = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "layerwise").rglob("*.py")
                    if "savefig(" in p.read_text(encoding="utf-8"))
    assert savers == ["layerwise/core/html.py"], savers
    assert "border-collapse" in BASE_CSS and "font-family" in BASE_CSS
