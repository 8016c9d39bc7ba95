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


STAGE_REPORTS = {"layerwise/analysis/plots.py": 6, "layerwise/sae/report.py": 1, "layerwise/intervention/report.py": 2,
                 "layerwise/compare/report.py": 3}


def test_every_stage_figure_is_saved_by_the_shell_with_its_files():
    """Each figure of the analysis, SAE, intervention and compare reports is a `report_figure` (the shell writes its
    PNG, SVG, PDF and table); none embeds a PNG of its own (figure_png is the validation report's and the shell's)."""
    for rel, figures in STAGE_REPORTS.items():
        text = (ROOT / rel).read_text(encoding="utf-8")
        assert text.count("@report_figure(") == figures, rel
        assert "figure_png" not in text, rel
    users = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "layerwise").rglob("*.py")
                   if "figure_png(" in p.read_text(encoding="utf-8"))
    assert users == ["layerwise/core/html.py", "layerwise/publish/report.py"], users


def test_rc_params_are_set_only_while_a_figure_is_drawn():
    """The publication style is a context (matplotlib.rc_context), never a global setting at import."""
    import importlib
    import re

    import matplotlib

    before = dict(matplotlib.rcParams)
    for rel in REPORTS + ["layerwise/analysis/plots.py", "layerwise/core/html.py"]:
        importlib.import_module(rel.removesuffix(".py").replace("/", "."))
        text = (ROOT / rel).read_text(encoding="utf-8")
        assert not re.search(r"rcParams\s*(\[|\.update)|\brc\(|matplotlib\.use\(|style\.use\(", text), rel
    assert dict(matplotlib.rcParams) == before
    assert "rc_context(STYLE)" in (ROOT / "layerwise/core/html.py").read_text(encoding="utf-8")
