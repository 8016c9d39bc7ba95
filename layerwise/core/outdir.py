"""The --outdir protocol's names (lock file, metadata and its "incomplete" status, superseded folder, ...).

They live in `outdir.json` next to this module, which the Nextflow head reads too
(lib/LayerwiseOutdir.groovy), so that the head and the PUBLISH_* tasks can never disagree on them.
"""
from __future__ import annotations

import json
from pathlib import Path

PROTOCOL_FILE = Path(__file__).with_name("outdir.json")
_NAMES = json.loads(PROTOCOL_FILE.read_text(encoding="utf-8"))

LOCK_FILE: str = _NAMES["lock_file"]                  # taken by the head before any task is submitted
METADATA_JSON: str = _NAMES["metadata"]               # says "incomplete" until PUBLISH_RESULTS verified a result
PREVIOUS_METADATA: str = _NAMES["previous_metadata"]  # the last finished run's metadata, kept by the head
PIPELINE_INFO: str = _NAMES["pipeline_info"]
SUPERSEDED_DIR: str = _NAMES["superseded_dir"]        # earlier runs' files that are not part of this result
LAYER_DIR: str = _NAMES["layer_dir"]                  # the published per-(layer, language) files
STATUS_INCOMPLETE: str = _NAMES["status_incomplete"]
STAGE_RECORD: str = _NAMES["stage_record"]            # <stage>/inputs.json: the outdir files a stage was computed from
SAE_DIR: str = _NAMES["sae_dir"]
ANALYSIS_DIR: str = _NAMES["analysis_dir"]
INTERVENTION_DIR: str = _NAMES["intervention_dir"]
# The stage folders after publishing, in the order they depend on each other (an intervention reads SAEs)
STAGE_DIRS: tuple[str, ...] = (SAE_DIR, ANALYSIS_DIR, INTERVENTION_DIR)
