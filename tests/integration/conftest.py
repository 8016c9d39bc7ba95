"""Fixtures of the integration tier: one finished `-profile test --sae` run shared by every module that needs
one (the engine is launched once per kind of run, not once per test module), and by every pytest-xdist worker
(the first worker that needs it runs it, the others wait for it and read it)."""
from __future__ import annotations

import os
import pickle
import shutil
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from filelock import FileLock

from tests.support.pipeline_helpers import FinishedRun, PipelineRun, output_digest, run_pipeline

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


def shared_tmp(tmp_path_factory) -> Path:
    """A folder every pytest-xdist worker of this session sees (the session's own temp folder without xdist)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def _finish(base: Path) -> FinishedRun:
    with quiet_offline_trainer():
        extraction = assert_ok(run_pipeline(base, "--analysis", "false", timeout=RUN_TIMEOUT))
        digest = output_digest(extraction.outdir)     # before the second run republishes into the same outdir
        trained = assert_ok(run_pipeline(base, "--sae", "--intervene", resume=True, timeout=RUN_TIMEOUT))
    reference = base / "reference"
    shutil.copytree(trained.outdir, reference, symlinks=True)
    return FinishedRun(replace(extraction, process=None), replace(trained, process=None), digest,
                       pd.read_parquet(trained.outdir / "sae" / "metrics.parquet"), reference)


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, fixture_dir) -> FinishedRun:
    shared = shared_tmp(tmp_path_factory)
    with FileLock(shared / "finished_run.lock"):
        saved = shared / "finished_run.pickle"
        if saved.is_file():
            run = pickle.loads(saved.read_bytes())
            if isinstance(run, str):
                pytest.fail(run, pytrace=False)
            return run
        try:
            (shared / "finished").mkdir(exist_ok=True)
            run = _finish(shared / "finished")
        except BaseException as exc:
            saved.write_bytes(pickle.dumps(f"the shared -profile test run failed (on another worker): {exc}"))
            raise
        saved.write_bytes(pickle.dumps(run))
        return run

