"""The shell every HTML report of layerwise shares (validation, SAE, analysis, intervention, compare): one base
stylesheet and one way to embed a figure, so that each report is self-contained and readable offline (no script,
no network: figures are base64 PNGs in the page).
"""
from __future__ import annotations

import base64
import io

# The rules every report starts from; a report adds only what is its own after them.
BASE_CSS = """
 body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em; color: #222; }
 table { border-collapse: collapse; margin: 1em 0; font-size: 0.8em; }
 th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: left; }
 img { max-width: 100%; }
"""


def figure_png(fig) -> str:
    """A matplotlib figure as a base64 PNG for `<img src="data:image/png;base64,...">` (no software URL in the file)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")
