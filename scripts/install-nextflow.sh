#!/usr/bin/env bash
# Resolve the pinned Nextflow engine (nextflow-runtime/pom.xml) and its runtime dependencies from
# Maven Central into nextflow-runtime/lib. Idempotent: a populated lib/ is reused.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../nextflow-runtime"
version=$(sed -n 's:.*<nextflow.version>\(.*\)</nextflow.version>.*:\1:p' pom.xml)
if [[ -f "lib/nextflow-$version.jar" ]]; then exit 0; fi
echo "Resolving Nextflow $version from Maven Central ..." >&2
rm -rf lib.partial
mvn -q -B dependency:copy-dependencies -DoutputDirectory=lib.partial -DincludeScope=runtime \
    -Dmaven.repo.local="$PWD/.m2"
rm -rf lib && mv lib.partial lib   # only a complete classpath is ever named lib/
