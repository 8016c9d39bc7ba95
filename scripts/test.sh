#!/usr/bin/env bash
# Every test of layerwise, in two tiers (tests/conftest.py marks each test by its folder):
#   tests/unit         in-process tests, Groovy checks in one JVM, `nextflow config` per profile, ruff
#   tests/integration  the pipeline through the real Nextflow engine (one shared -profile test --sae run,
#                      -resume, kill + resume, stub, early failures, planted analyses), the local SLURM
#                      cluster, nf-core lint
# `scripts/test.sh --unit` runs the unit tier only. Both tiers run in one pytest session on pytest-xdist
# workers (LAYERWISE_TEST_WORKERS, default 4 for both tiers, 2 for the unit tier): the engines of the
# integration tier spend much of their time waiting between tasks, and the workers done with them take the
# unit tests. tests/conftest.py groups the tests that share a run or a module fixture onto one worker and
# queues the longest work first. LAYERWISE_TEST_SERIAL=1 runs everything in this one process instead.
# Installs what is missing first (scripts/setup.sh is idempotent and reuses what it built). Other arguments
# go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
tiers=(tests/integration tests/unit)
workers="${LAYERWISE_TEST_WORKERS:-4}"
if [[ "${1:-}" == "--unit" ]]; then tiers=(tests/unit); workers="${LAYERWISE_TEST_WORKERS:-2}"; shift; fi
scripts/setup.sh
export NXF_OFFLINE=true HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
parallel=(-n "$workers" --dist loadgroup --no-loadscope-reorder)
if [[ -n "${LAYERWISE_TEST_SERIAL:-}" ]]; then parallel=(); fi
exec .venv/bin/python -m pytest "${parallel[@]}" "${tiers[@]}" "$@"
