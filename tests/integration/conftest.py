"""Fixtures of the integration tier: one finished `-profile test --sae` run shared by every module that needs
one (the engine is launched once per kind of run, not once per test module)."""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass

import pandas as pd
import pytest

from tests.support.pipeline_helpers import PipelineRun, output_digest, run_pipeline

RUN_TIMEOUT = 1500   # seconds for one full run (a few minutes on an idle 2-core machine)


@contextmanager
def quiet_offline_trainer():
    """No W&B and no progress bars in the SAE tasks (SAELens), restored afterwards."""
    saved = {k: os.environ.get(k) for k in ("WANDB_MODE", "TQDM_DISABLE")}
    os.environ["WANDB_MODE"], os.environ["TQDM_DISABLE"] = "disabled", "1"
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def assert_ok(run: PipelineRun) -> PipelineRun:
    assert not run.timed_out, f"nextflow timed out\n{run.failure_message()}"
    assert run.returncode == 0, f"nextflow failed\n{run.failure_message()}"
    return run


@dataclass
class FinishedRun:
    """The shared run: `extraction` (-profile test --analysis false) then `trained` (-resume --sae --intervene: SAEs,
    the analysis and the intervention on the published files, nothing re-extracted), in one launch, work and
    output directory."""

    extraction: PipelineRun
    trained: PipelineRun
    digest: dict[str, str]        # output_digest of the extraction's results (layer files, metadata tables)
    metrics: pd.DataFrame         # sae/metrics.parquet as the trained run wrote it

    @property
    def outdir(self):
        return self.trained.outdir

    @property
    def launchdir(self):
        return self.trained.launchdir

    @property
    def workdir(self):
        return self.trained.workdir


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, fixture_dir) -> FinishedRun:
    base = tmp_path_factory.mktemp("finished")
    with quiet_offline_trainer():
        extraction = assert_ok(run_pipeline(base, "--analysis", "false", timeout=RUN_TIMEOUT))
        digest = output_digest(extraction.outdir)     # before the second run republishes into the same outdir
        trained = assert_ok(run_pipeline(base, "--sae", "--intervene", resume=True, timeout=RUN_TIMEOUT))
    return FinishedRun(extraction, trained, digest, pd.read_parquet(trained.outdir / "sae" / "metrics.parquet"))
