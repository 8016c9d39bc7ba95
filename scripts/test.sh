#!/usr/bin/env bash
# Every test of layerwise, in two tiers (tests/conftest.py marks each test by its folder):
#   tests/unit         in-process tests, Groovy checks in one JVM, `nextflow config` per profile, ruff
#   tests/integration  the pipeline through the real Nextflow engine (one shared -profile test --sae run,
#                      -resume, kill + resume, stub, early failures, planted analyses), the local SLURM
#                      cluster, nf-core lint
# `scripts/test.sh --unit` runs the unit tier only. Installs what is missing first (scripts/setup.sh is
# idempotent and reuses what it built). Other arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
tiers=(tests/unit tests/integration)
if [[ "${1:-}" == "--unit" ]]; then tiers=(tests/unit); shift; fi
scripts/setup.sh
export NXF_OFFLINE=true HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/python -m pytest "${tiers[@]}" "$@"
