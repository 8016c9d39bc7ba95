#!/usr/bin/env bash
# One-time set-up of a fresh machine (idempotent: re-runs reuse what is installed; 1 and 4 run in the
# background while 2 and 3 run):
#   1. the pinned Nextflow engine from Maven Central into nextflow-runtime/lib;
#   2. the pinned Python environment into .venv;
#   3. the offline fixtures (tiny Gemma 3, tokenizer, synthetic samplesheet) into tests/fixtures/build;
#   4. nf-core tools (pinned below) into .venv-nfcore, apart from the pipeline's environment (its
#      dependencies would clash with the pins of requirements.txt), for `nf-core pipelines lint`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
command -v java >/dev/null || { echo "setup: java (JDK 17+) is required for Nextflow" >&2; exit 1; }
command -v mvn >/dev/null || { echo "setup: mvn is required to resolve Nextflow from Maven Central" >&2; exit 1; }
python="${PYTHON:-python3}"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "setup: Python >= 3.11 is required (transformers 5.2x); set PYTHON=/path/to/python3.11" >&2; exit 1; }
started=$(date +%s)

# Steps 1 and 4 download and unpack (mostly waiting on the network and disk): they run in the background while
# steps 2 and 3 build the pipeline's environment and the fixtures. Each one's log is shown if it fails.
logs="$(mktemp -d -t layerwise-setup.XXXXXX)"
scripts/install-nextflow.sh >"$logs/nextflow.log" 2>&1 &
nextflow_pid=$!
nfcore_pin="nf-core==4.2.1"
(
    [[ -x .venv-nfcore/bin/python ]] || "$python" -m venv .venv-nfcore
    if [[ "$(cat .venv-nfcore/.requirements 2>/dev/null)" != "$nfcore_pin" ]]; then
        .venv-nfcore/bin/pip install -q --disable-pip-version-check "$nfcore_pin"
        echo "$nfcore_pin" > .venv-nfcore/.requirements
    fi
) >"$logs/nf-core.log" 2>&1 &
nfcore_pid=$!
background_step() {   # wait for a background step; on failure show its log and stop
    local pid=$1 name=$2
    if ! wait "$pid"; then
        echo "setup: $name failed:" >&2
        cat "$logs/$name.log" >&2
        exit 1
    fi
    cat "$logs/$name.log" >&2
}
trap 'kill "$nextflow_pid" "$nfcore_pid" 2>/dev/null || true; rm -rf "$logs"' EXIT

[[ -x .venv/bin/python ]] || "$python" -m venv .venv
stamp=.venv/.requirements.sha256
want=$(cat requirements.txt requirements-test.txt | sha256sum | cut -d' ' -f1)
if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
    # byte-compiled at install (pip's default): where PYTHONDONTWRITEBYTECODE is set, as on CI, every process would
    # otherwise compile torch and transformers from source at each import
    .venv/bin/pip install -q --disable-pip-version-check -r requirements-test.txt
    echo "$want" > "$stamp"
fi
.venv/bin/python scripts/make-fixtures.py --out tests/fixtures/build
background_step "$nextflow_pid" nextflow
background_step "$nfcore_pid" nf-core
echo "setup: ready in $(( $(date +%s) - started )) s" >&2
