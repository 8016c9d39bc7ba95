"""Shared pytest fixtures. Tests run offline on a tiny random Gemma 3 built by tests.support.fixtures."""
import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # set before anything imports transformers / huggingface_hub
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # test the checkout's layerwise, as bin/ scripts do
FIXTURE_BUILD = ROOT / "tests" / "fixtures" / "build"  # scripts/setup.sh builds the same folder

torch.set_num_threads(2)

TIERS = ("unit", "integration")


def pytest_collection_modifyitems(config, items):
    for item in items:
        tier = Path(str(item.path)).resolve().relative_to(ROOT / "tests").parts[0]
        if tier not in TIERS:
            raise pytest.UsageError(f"{item.nodeid}: tests live in tests/unit or tests/integration")
        item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    """The fixture build (model/, data/): built once, reused while its version stamp matches."""
    from tests.support import fixtures

    fixtures.ensure_fixtures(FIXTURE_BUILD)
    return FIXTURE_BUILD


@pytest.fixture(scope="session")
def tiny_model_dir(fixture_dir) -> Path:
    """Tiny Gemma3ForConditionalGeneration + Gemma3Processor, loadable with local_files_only=True."""
    return fixture_dir / "model"


@pytest.fixture(scope="session")
def samplesheet(fixture_dir) -> Path:
    """Synthetic samplesheet (12 rows; image paths relative to it)."""
    return fixture_dir / "data" / "samples.csv"


@pytest.fixture(scope="module")
def quiet_offline_trainer():
    """No W&B and no progress bars for one test module (SAELens training); restored afterwards, so that
    nothing leaks into later tests and their subprocesses."""
    saved = {k: os.environ.get(k) for k in ("WANDB_MODE", "TQDM_DISABLE")}
    os.environ["WANDB_MODE"], os.environ["TQDM_DISABLE"] = "disabled", "1"
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
