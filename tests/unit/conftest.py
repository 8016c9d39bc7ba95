"""Fixtures of the unit tier."""
from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.engine import NEXTFLOW, PROFILES, ROOT, nextflow_env


@pytest.fixture(scope="session")
def resolved_configs(tmp_path_factory) -> dict[str, dict]:
    """`nextflow [-c ...] config -profile X -o json .` for every profile, all at once (one JVM each)."""
    launch = tmp_path_factory.mktemp("nextflow-config")

    def resolve(name: str):
        before, after = PROFILES[name]
        cmd = [str(NEXTFLOW), *before, "config", *after, "-o", "json", str(ROOT)]
        run = subprocess.run(cmd, cwd=launch, capture_output=True, text=True, timeout=300, env=nextflow_env())
        assert run.returncode == 0, f"{' '.join(cmd)}:\n{run.stdout}\n{run.stderr}"
        return name, json.loads(run.stdout)

    with ThreadPoolExecutor(max_workers=len(PROFILES)) as pool:
        return dict(pool.map(resolve, PROFILES))
