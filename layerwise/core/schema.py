"""The one place that names layerwise's files, their keys and the allowed option values (torch-free)."""
from __future__ import annotations

from layerwise.core.outdir import METADATA_JSON  # noqa: F401 (re-exported with the other file names)

TOKEN_SELECTIONS = ("all", "text", "caption", "mean", "last")
# The selections that store one vector per sample (pooled over positions, or the last one), not token rows
PER_SAMPLE_SELECTIONS = ("mean", "last")
LAYOUTS = ("padded", "ragged")
NAN_POLICIES = ("zero", "fail", "keep")
# --dtype values; "auto" is resolved per device by layerwise.models.loading.resolve_dtype
DTYPES = ("auto", "bfloat16", "float32", "float16")
# --device values the pipeline offers (extraction also takes any torch device, e.g. "cuda:1").
DEVICES = ("auto", "cuda", "cpu")

# Samplesheet columns (assets/schema_input.json describes them for users).
SAMPLE_ID, IMAGE, GENDER = "sample_id", "image", "gender"
CAPTION_PREFIX = "caption_"
GENDERS = ("male", "female", "unknown")

# Keys of every per-(layer, language) file. The first four are the seed's.
SEED_KEYS = ("layer", "activations", "genders", "hidden_size")
LAYER_FILE_KEYS = SEED_KEYS + (
    "language",         # str
    "sample_ids",       # list[str], in samplesheet order
    "lengths",          # int64 [N]: positions kept per sample
    "offsets",          # int64 [N+1]: start of each sample's rows (ragged); cumsum of lengths
    "token_ids",        # int64: padded [N, T_max] (-1 beyond lengths) / ragged [total]; -1 for `mean`
    "token_kinds",      # int8, same shape as token_ids: TOKEN_KINDS code of every position
    "nan_counts",       # int64 [N]: NaN/Inf values seen per sample (before the policy applied)
    "token_selection",  # str, one of TOKEN_SELECTIONS
    "layout",           # str, one of LAYOUTS
    "dtype",            # str, e.g. "bfloat16"
    "nan_policy",       # str, one of NAN_POLICIES
    "model_id",         # str: hub id or local path given by the user
    "model_revision",   # str: hub commit / revision, or "local"
    "num_layers",       # int: decoder layers in the model
)
PAD_TOKEN_ID = -1  # token_ids value beyond a sample's length in the padded layout


def layer_filename(layer: int, language: str) -> str:
    return f"layer_{layer}_{language}.pt"


def parse_layer_filename(name: str) -> tuple[int, str] | None:
    """(layer, language) of a `layer_filename`, or None for any other name."""
    import re

    m = re.fullmatch(r"layer_(\d+)_([a-z][a-z_]*)\.pt", name)
    return (int(m.group(1)), m.group(2)) if m else None


def combined_filename(language: str) -> str:
    return f"activations_{language}_all_layers.pt"


def caption_column(language: str) -> str:
    return f"{CAPTION_PREFIX}{language}"


def dtype_name(dtype) -> str:
    """A torch dtype's name as stored in the files ("bfloat16"), without importing torch."""
    return str(dtype).removeprefix("torch.")

# Kind of every stored position (key "token_kinds", int8, same shape as "token_ids"): what the
# analysis views and the SAE token filters select on. PAD marks positions beyond a sample's length.
TOKEN_KINDS = {
    "pad": 0,        # beyond lengths (padded layout only)
    "bos": 1,        # <bos>
    "image": 2,      # image soft tokens (token_type_ids == 1)
    "prompt": 3,     # the instruction text of the user turn
    "caption": 4,    # the caption (model turn, after its header)
    "template": 5,   # chat-template tokens: turn markers, role names, image delimiters, newlines
}

# The token kinds each --token_selection can store (every family; a sample may have fewer). `mean` stores one
# row per sample, pooled over the caption positions, with kind `caption`; `caption` keeps the model turn from the
# caption's first token on (the turn end after it is `template`); `last` keeps the last position (the turn end, or
# the caption's last token). Extraction checks every stored position against this table (extract.unit.plan_layout),
# and PREFLIGHT refuses SAE token-kind filters that keep none of a selection's kinds.
SELECTION_KINDS = {
    "all": ("bos", "image", "prompt", "caption", "template"),
    "text": ("bos", "prompt", "caption", "template"),
    "caption": ("caption", "template"),
    "mean": ("caption",),
    "last": ("caption", "template"),
}

# What validation writes into --outdir (besides the layer files).
# (METADATA_JSON, the metadata file, is a name of the outdir protocol: layerwise/core/outdir.json)
SAMPLES_PARQUET = "metadata/samples.parquet"
LAYERS_PARQUET = "metadata/layers.parquet"
NORMS_PARQUET = "metadata/norms_by_gender.parquet"
REPORT_HTML = "validation_report.html"
# The token of every stored row (sample, language, position): concatenated by PUBLISH_RESULTS from the table each
# extraction unit writes into its folder (UNIT_TOKENS_FILE: the unit has the tokenizer, publishing loads no model).
TOKENS_PARQUET = "metadata/tokens.parquet"
UNIT_TOKENS_FILE = "tokens.parquet"
TOKENS_COLUMNS = ("sample_id", "language", "position", "token_id", "token", "kind")
