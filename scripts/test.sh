#!/usr/bin/env bash
# Every test of layerwise: the Python package, the pipeline through the real Nextflow engine
# (stub, test profile, -resume, errors), the local SLURM cluster, and the nf-test spec parse check.
# Installs what is missing first (scripts/setup.sh is idempotent). Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
scripts/setup.sh
export NXF_OFFLINE=true HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/python -m pytest tests "$@"
