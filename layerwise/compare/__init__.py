"""Put several published outdirs (one model each) side by side: `layerwise compare`.

Public API::

    from layerwise.compare import compare
    result = compare(["results_gemma", "results_qwen"], "compare_dir", labels=["gemma", None])

Modules: `inputs` (one published outdir: its model, probes, SAE metrics, intervention summary, and
notes for the parts it lacks), `table` (comparison.parquet: its columns and how rows are joined),
`report` (report.html: self-contained figures by relative depth), `run` (`compare`). Reads only
published files; imports no other stage. docs/output.md ("comparison.parquet") documents the columns.
"""
from layerwise.compare.run import compare

__all__ = ["compare"]
