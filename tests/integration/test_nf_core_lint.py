"""`nf-core pipelines lint` on the repository (integration tier: it runs `nextflow config` through nf-core tools,
a minute or more on 2 cores)."""
from __future__ import annotations

import json
import os
import subprocess

from tests.support.engine import NFCORE, ROOT, nextflow_env, require_nf_core


def test_nf_core_pipelines_lint_has_no_failures(tmp_path):
    require_nf_core()
    results = tmp_path / "lint.json"
    # ./nextflow on PATH for nf-core's `nextflow config`; fresh NXF_HOME and XDG folders: nf-core caches the
    # config keyed by nextflow.config and main.nf only, and a stale clone of nf-core/modules must not count
    env = nextflow_env(PATH=f"{ROOT}{os.pathsep}{os.environ.get('PATH', '')}", NXF_HOME=str(tmp_path / "nxf-home"),
               XDG_CONFIG_HOME=str(tmp_path / "xdg-config"), XDG_CACHE_HOME=str(tmp_path / "xdg-cache"),
               HIDE_PROGRESS="1")
    run = subprocess.run([str(NFCORE), "pipelines", "lint", "--dir", str(ROOT), "--plain-text", "--json", str(results)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert results.is_file(), f"nf-core pipelines lint did not finish (exit {run.returncode}):\n{run.stdout[-4000:]}" \
                              f"\n{run.stderr[-4000:]}"
    data = json.loads(results.read_text())
    failed = [f"{test}: {msg}" for test, msg in data["tests_failed"]]
    assert not failed, "nf-core pipelines lint failures:\n  " + "\n  ".join(failed)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
