#!/usr/bin/env bash
# Every test of layerwise, in two tiers (tests/conftest.py marks each test by its folder):
#   tests/unit         in-process tests, Groovy checks in one JVM, `nextflow config` per profile, ruff
#   tests/integration  the pipeline through the real Nextflow engine (one shared -profile test --sae run,
#                      -resume, kill + resume, stub, early failures, planted analyses), the local SLURM
#                      cluster, nf-core lint
# `scripts/test.sh --unit` runs the unit tier only; with both tiers the unit tier runs alongside the integration
# tier (LAYERWISE_TEST_SERIAL=1: one after the other). Installs what is missing first (scripts/setup.sh is
# idempotent and reuses what it built). Other arguments go to pytest (both tiers).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
tiers=(tests/unit tests/integration)
if [[ "${1:-}" == "--unit" ]]; then tiers=(tests/unit); shift; fi
scripts/setup.sh
export NXF_OFFLINE=true HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if [[ ${#tiers[@]} -eq 1 || -n "${LAYERWISE_TEST_SERIAL:-}" ]]; then
    exec .venv/bin/python -m pytest "${tiers[@]}" "$@"
fi
# Both tiers: the unit tier runs alongside the integration tier, whose engines spend much of their time
# waiting between tasks (LAYERWISE_TEST_SERIAL=1 runs them one after the other). Its output follows.
unit_log="$(mktemp -t layerwise-unit-tier.XXXXXX)"
.venv/bin/python -m pytest tests/unit "$@" >"$unit_log" 2>&1 &
unit_pid=$!
trap 'kill "$unit_pid" 2>/dev/null || true' INT TERM
set +e
.venv/bin/python -m pytest tests/integration "$@"
integration=$?
wait "$unit_pid"
unit=$?
set -e
echo "---- unit tier (tests/unit, run alongside): exit status ${unit} ----"
cat "$unit_log"
rm -f "$unit_log"
echo "---- integration tier: exit status ${integration}; unit tier: exit status ${unit} ----"
if (( integration != 0 )); then exit "$integration"; fi
exit "$unit"
