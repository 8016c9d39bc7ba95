"""One rule for "--model is a local folder, not a hub id", the same in Python and in the Nextflow head."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

from layerwise.models.loading import looks_like_path
from tests.support.engine import java as _java

ROOT = Path(__file__).resolve().parents[2]
CASES = {  # --model value: is it a path?
    "google/gemma-3-4b-it": False, "gemma-3-4b-it": False, "owner/name": False,
    "/abs/model": True, "./model": True, "../models/gemma": True, "~/models/gemma": True, ".": True, "..": True,
    "models/google/gemma-3-4b-it": True, "tests/fixtures/build/model": True,
}
GROOVY = """
def gcl = new GroovyClassLoader(); gcl.addClasspath(args[0])
def U = gcl.loadClass('LayerwiseUtils')
println groovy.json.JsonOutput.toJson(args[1..-1].collectEntries { [(it): U.looksLikePath(it)] })
"""


def test_python_rule():
    assert {s: looks_like_path(s) for s in CASES} == CASES


def test_nextflow_head_uses_the_same_rule(tmp_path):
    script = tmp_path / "rule.groovy"
    script.write_text(GROOVY)
    run = subprocess.run([_java(), "-XX:TieredStopAtLevel=1", "-cp", f"{ROOT / 'nextflow-runtime' / 'lib'}/*",
                          "groovy.ui.GroovyMain", str(script), str(ROOT / "lib"), *CASES],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1]) == CASES
