"""Test support: the JVM and Nextflow environment the tests start (shared by both tiers)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NEXTFLOW = ROOT / "nextflow"
LIB = ROOT / "nextflow-runtime" / "lib"
# Profiles as users run them; -c goes before `config` (it is an option of `nextflow` itself)
PROFILES = {
    "test": ([], ["-profile", "test"]),
    "ncc": ([], ["-profile", "ncc"]),
    "local": ([], ["-profile", "local"]),
    "slurm": ([], ["-profile", "slurm"]),
    "venv": ([], ["-profile", "venv"]),
    "test+slurm_local": (["-c", str(ROOT / "conf" / "slurm_local.config")], ["-profile", "test"]),
    # as tests/integration/test_slurm.py runs it
    "ncc+slurm_local": (["-c", str(ROOT / "conf" / "slurm_local.config")], ["-profile", "ncc"]),
}
NFCORE_VENV = ROOT / ".venv-nfcore"   # nf-core tools, apart from the pipeline's environment (scripts/setup.sh)
NFCORE = NFCORE_VENV / "bin" / "nf-core"


def nextflow_env(**extra: str) -> dict[str, str]:
    """The environment for `./nextflow` offline, without ANSI logs, on a C1-only JIT (these JVMs are all start-up)."""
    env = dict(os.environ)
    env.update(NXF_OFFLINE="true", NXF_ANSI_LOG="false")
    env.setdefault("NXF_JVM_OPTS", "-XX:TieredStopAtLevel=1")
    env.update(extra)
    return env


def java() -> str:
    """The java command Nextflow itself would use (JAVA_CMD, JAVA_HOME, else PATH)."""
    if os.environ.get("JAVA_CMD"):
        return os.environ["JAVA_CMD"]
    if os.environ.get("JAVA_HOME"):
        return str(Path(os.environ["JAVA_HOME"]) / "bin" / "java")
    return "java"


def groovy_command(script: Path, *args: str) -> list[str]:
    """Run a Groovy script on the Groovy of Nextflow's own jars, with lib/ (the pipeline's classes) as argument 0."""
    return [java(), "-XX:TieredStopAtLevel=1", "-cp", f"{LIB}/*", "groovy.ui.GroovyMain", str(script),
            str(ROOT / "lib"), *map(str, args)]


def require_nf_core() -> None:
    if not NFCORE.exists():
        pytest.fail(f"{NFCORE.relative_to(ROOT)} is missing: scripts/setup.sh installs nf-core tools there "
                    "(run it; this check must not be skipped)")
