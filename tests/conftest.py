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


def _tier(item) -> str:
    tier = Path(str(item.path)).resolve().relative_to(ROOT / "tests").parts[0]
    if tier not in TIERS:
        raise pytest.UsageError(f"{item.nodeid}: tests live in tests/unit or tests/integration")
    return tier


def _module_fixtures(item) -> bool:
    """Whether the test uses a module-scoped fixture (made once per worker: its module's tests share a worker)."""
    return any(defs and defs[-1].scope == "module" for defs in item._fixtureinfo.name2fixturedefs.values())


def _group_and_rank(item, tier: str) -> tuple[str | None, int]:
    """The pytest-xdist group of a test (tests of one group run on one worker, in order) and where its work unit
    goes in the queue: the longest integration work first, the unit tier after it, so that the workers that are
    done with engines share the unit tests.
      - the tests that read, damage or resume the shared finished run (`finished_run` as an argument): one group,
        since several of them launch in its launch folder (one engine at a time there);
      - a module whose tests share a module-scoped fixture (a cluster, two planted runs, a JVM of checks): its module;
      - the unit tests that read every profile's resolved configuration (`resolved_configs`, a JVM per profile): one;
      - every other unit test: its module; every other integration test: alone (it launches its own engine)."""
    module = item.module.__name__
    direct = item._fixtureinfo.argnames
    if tier == "integration":
        if "finished_run" in direct:
            return "finished_run", 2
        if _module_fixtures(item):
            return module, (0 if "slurm" in module else 1)
        # tests that launch their own engine; those that need the shared run after the others (it is made by then)
        return None, (4 if "finished_run" in item.fixturenames else 3)
    if "resolved_configs" in item.fixturenames:
        return "resolved_configs", 5
    return module, 5


def _join_group(item, group: str) -> None:
    """pytest-xdist's --dist loadgroup reads a test's group from its node id (`<id>@<group>`), which it sets through
    an attribute that pytest 9.2 no longer reads (item._nodeid): so the id is set here, the way xdist means to."""
    from _pytest.nodeid import NodeId

    item._id = NodeId.parse(f"{item.nodeid}@{group}")


@pytest.hookimpl(tryfirst=True)   # before pytest-xdist reads the xdist_group marks (--dist loadgroup)
def pytest_collection_modifyitems(config, items):
    rank = {}
    loadgroup = bool(config.getvalue("loadgroup")) if hasattr(config.option, "loadgroup") else False
    for item in items:
        tier = _tier(item)
        item.add_marker(getattr(pytest.mark, tier))
        group, rank[id(item)] = _group_and_rank(item, tier)
        marks = [m.args[0] if m.args else m.kwargs.get("name", "default") for m in item.iter_markers("xdist_group")]
        if group and not marks:
            item.add_marker(pytest.mark.xdist_group(group))
            marks = [group]
        if loadgroup and marks and "@" not in item.nodeid:   # on a pytest-xdist worker of --dist loadgroup
            _join_group(item, "_".join(sorted(map(str, marks))))
    items.sort(key=lambda item: rank[id(item)])   # stable: collection order within a rank


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
