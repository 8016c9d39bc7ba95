"""`metadata/tokens.parquet`: the token of every stored row, from the tables the extraction units wrote.

PUBLISH_RESULTS loads no model and no tokenizer. Each EXTRACT_ACTIVATIONS unit, which has the processor,
writes the table of its own samples in its language into its folder (`schema.UNIT_TOKENS_FILE`,
`layerwise.extract.unit.tokens_table`): one row per row its layer files store. Every layer group of a
(language, shard) writes the same table; the first group's is taken (`unit_tokens_tables`). The
concatenation, languages in plan order and shards in sample order, is checked row by row against the
layer files just validated (sample, position, token id, kind: check `tokens`) before it is written.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from layerwise.core import schema
from layerwise.core.atomic import atomic_path
from layerwise.publish.validation.checks import Context
from layerwise.publish.validation.problems import Problems

INT_COLUMNS = ("position", "token_id")


def unit_tokens_tables(plan: dict[str, Any], unit_dirs: Sequence[Path]) -> dict[tuple[str, int], Path | None] | None:
    """{(language, shard): the table of the first unit of the plan (its first layer group) that wrote one, or None}.

    None when no unit wrote a table at all (folders of another writer, such as the test factory's): then no
    tokens table is published. Units of this version always write one, so a (language, shard) without a
    table while others have one is a problem of check `tokens`.
    """
    by_name = {Path(d).name: Path(d) for d in unit_dirs}
    found: dict[tuple[str, int], Path | None] = {}
    for unit in plan.get("units", []):          # plan order: layer group, then language, then shard
        key = (str(unit["language"]), int(unit["shard"]))
        folder = by_name.get(unit["id"])
        path = folder / schema.UNIT_TOKENS_FILE if folder is not None else None
        if found.get(key) is None:
            found[key] = path if path is not None and path.is_file() else None
    return found if any(found.values()) else None


def _stored(tensor: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The stored positions of a token_ids / token_kinds tensor, flat (padded [N, T_max] or ragged [P])."""
    if tensor.dim() == 2:
        keep = torch.arange(tensor.shape[1])[None, :] < lengths[:, None]
        return tensor[keep]
    return tensor


def _first_mismatch(a, b) -> int | None:
    import numpy as np

    diff = np.flatnonzero(np.asarray(a) != np.asarray(b))
    return int(diff[0]) if diff.size else None


def _check_language(part, language: str, ref, sample_ids: list[str], problems: Problems) -> None:
    """`part` (the language's rows) against the reference layer file's lengths, token ids and kinds."""
    import numpy as np

    name, lengths, token_ids, token_kinds = ref
    lengths = lengths.to(torch.int64)
    total = int(lengths.sum())
    if len(part) != total or len(lengths) != len(sample_ids):
        problems.add("tokens", f"{language}: the units' token tables hold {len(part)} rows, {name} stores {total} "
                               f"rows of {len(lengths)} samples")
        return
    counts = lengths.numpy()
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    want = {
        "sample_id": np.repeat(np.asarray(sample_ids, dtype=object), counts),
        "position": np.arange(total) - starts,
        "token_id": _stored(token_ids, lengths).numpy(),
    }
    kinds = part["kind"].map(schema.TOKEN_KINDS)
    if kinds.isna().any():
        bad = sorted(set(part["kind"][kinds.isna()].astype(str)))
        problems.add("tokens", f"{language}: token kinds {bad} are not in schema.TOKEN_KINDS")
        return
    got = {"sample_id": part["sample_id"].to_numpy(dtype=object), "position": part["position"].to_numpy(),
           "token_id": part["token_id"].to_numpy()}
    for column in ("sample_id", "position", "token_id"):
        i = _first_mismatch(got[column], want[column])
        if i is not None:
            problems.add("tokens", f"{language}: token row {i} (sample {want['sample_id'][i]}, position "
                                   f"{want['position'][i]}) has {column} {got[column][i]!r}, {name} says "
                                   f"{want[column][i]!r}")
            return
    i = _first_mismatch(kinds.to_numpy(dtype=np.int64), _stored(token_kinds, lengths).numpy().astype(np.int64))
    if i is not None:
        problems.add("tokens", f"{language}: token row {i} (sample {want['sample_id'][i]}, position "
                               f"{want['position'][i]}) has kind {part['kind'].iloc[i]!r}, unlike {name}'s token_kinds")
    if (part["language"] != language).any():
        problems.add("tokens", f"{language}: the units' token tables hold rows of other languages")


def tokens_table(tables: dict[tuple[str, int], Path | None], languages: Sequence[str], ctx: Context,
                 problems: Problems):
    """The units' tables concatenated (languages in plan order, shards in order) and checked; None on a problem."""
    import pandas as pd

    frames, before = [], len(problems)
    for language in languages:
        keys = sorted((k for k in tables if k[0] == language), key=lambda k: k[1])
        missing = [shard for (_, shard) in keys if tables[language, shard] is None]
        if missing or not keys:
            problems.add("tokens", f"{language}: no extraction unit of shard(s) {missing or '(none planned)'} wrote "
                                   f"{schema.UNIT_TOKENS_FILE}")
            continue
        parts = []
        for key in keys:
            try:
                part = pd.read_parquet(tables[key])
            except Exception as exc:
                problems.add("tokens", f"{tables[key]}: cannot be read: {type(exc).__name__}: {exc}")
                break
            if list(part.columns) != list(schema.TOKENS_COLUMNS):
                problems.add("tokens", f"{tables[key]}: columns {list(part.columns)}, expected "
                                       f"{list(schema.TOKENS_COLUMNS)}")
                break
            parts.append(part)
        else:
            part = pd.concat(parts, ignore_index=True)
            ref = ctx.lengths_ref.get(language)
            if ref is not None:    # else the layer files' own problems are reported
                _check_language(part, language, ref, ctx.sample_ids, problems)
            frames.append(part)
    if len(problems) > before or not frames:
        return None
    table = pd.concat(frames, ignore_index=True)
    both = table.dropna(subset=["token"]).groupby("token_id")["token"].nunique()
    if (both > 1).any():
        problems.add("tokens", f"token ids {both[both > 1].index.tolist()[:10]} have several token strings "
                               "across the units' tables (different tokenizers?)")
        return None
    return table


def write_tokens_parquet(table, path: Path) -> None:
    """The table, typed (token ids and positions int64, the rest strings), atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = pa.schema([(c, pa.int64() if c in INT_COLUMNS else pa.string()) for c in table.columns])
    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pandas(table, schema=types, preserve_index=False), tmp)
