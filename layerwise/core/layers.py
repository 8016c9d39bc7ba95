"""Layer specs (``--layers``) and layer groups (``--layer_groups``).

Layer spec grammar (the Nextflow side implements the same rules; both are tested against
``tests/layer_spec_cases.json``):

* tokens are separated by commas and/or whitespace; empty tokens are ignored;
* ``all`` (any case) means every layer ``0 .. num_layers-1``;
* ``N`` is one layer, ``A-B`` the inclusive range A..B (no spaces inside; ``A <= B``);
* only ASCII digits; leading zeros are allowed (``007`` is 7);
* the result is sorted and de-duplicated; layers must lie in ``[0, num_layers)``.

Layer groups: each group becomes one GPU task that captures its layers in a single forward
pass. ``auto`` gives one group per contiguous run of requested layers (so adding a separate
range later leaves the earlier groups, and their cached tasks, unchanged); ``N`` splits the
requested layers in order into N near-equal contiguous groups (the leftover layers go to the
outer groups first: first, last, second, second-to-last, ...; 34 layers in 4 groups gives
0-8, 9-16, 17-24, 25-33); explicit groups are ranges/layers separated by commas or spaces
(``0-8,9-16``: every token is one group) or, to build a group from several tokens, by
semicolons (``0-3 7;4-6``). Explicit groups must use only requested layers and cover each
requested layer exactly once. Groups are returned sorted by their first layer.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from layerwise.core.errors import LayerwiseError

LAYERS_PARAM = "--layers"
GROUPS_PARAM = "--layer_groups"

# The syntax of the two parameters as JSON-schema (ECMA) patterns: nextflow_schema.json uses exactly
# these (tests/unit/test_layers.py checks that, and that a spec matches iff the parser can read it).
# Values (ranges within the model, groups covering the layers) are checked by the parser, in PREFLIGHT.
_TOKEN = r"([Aa][Ll][Ll]|[0-9]+(-[0-9]+)?)"
LAYER_SPEC_PATTERN = rf"^[\s,]*{_TOKEN}([\s,]+{_TOKEN})*[\s,]*$"
_GROUP_TOKEN = r"[0-9]+(-[0-9]+)?"
LAYER_GROUPS_PATTERN = (rf"^\s*([Aa][Uu][Tt][Oo]|-?[0-9]+|[\s,;]*{_GROUP_TOKEN}([\s,;]+{_GROUP_TOKEN})*[\s,;]*)\s*$")

_SEP = re.compile(r"[\s,]+")
_SINGLE = re.compile(r"[0-9]+")
_RANGE = re.compile(r"([0-9]+)-([0-9]+)")
_NEGATIVE = re.compile(r"-[0-9]+(-[0-9]+)?|[0-9]+--[0-9]+")


def _valid(num_layers: int) -> str:
    return f"valid layers are [0, {num_layers}), i.e. {format_layers(range(num_layers))}"


def _tokens(spec: str, sep: re.Pattern = _SEP) -> list[str]:
    return [t for t in sep.split(spec.strip()) if t]


def parse_layer_spec(spec: str | int, num_layers: int, *, param: str = LAYERS_PARAM) -> list[int]:
    """Parse a layer spec (``all``, ``0-33``, ``0 10 14 18``, ``0,10,14-18``) into sorted layers."""
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"num_layers must be a positive int, got {num_layers!r}")
    if isinstance(spec, bool) or spec is None:
        raise LayerwiseError(f"{param} must be a layer spec such as 'all', '0-33' or '0 10 14-18', got {spec!r}")
    if isinstance(spec, int):
        spec = str(spec)
    tokens = _tokens(str(spec))
    if not tokens:
        raise LayerwiseError(
            f"{param} is empty: give 'all', a range such as '0-{num_layers - 1}', or a list such as "
            f"'0 10 14-18' ({_valid(num_layers)})"
        )
    layers: set[int] = set()
    for token in tokens:
        if token.lower() == "all":
            layers.update(range(num_layers))
            continue
        if _SINGLE.fullmatch(token):
            start = end = int(token)
        elif m := _RANGE.fullmatch(token):
            start, end = int(m.group(1)), int(m.group(2))
            if start > end:
                raise LayerwiseError(
                    f"{param}: range '{token}' is reversed (start > end); write '{end}-{start}' "
                    f"({_valid(num_layers)})"
                )
        elif _NEGATIVE.fullmatch(token):
            raise LayerwiseError(
                f"{param}: '{token}' is negative; layers are numbered from 0, {_valid(num_layers)}"
            )
        else:
            raise LayerwiseError(
                f"{param}: cannot read '{token}'; use 'all', single layers ('14') and ranges ('14-18', "
                f"no spaces inside) separated by spaces or commas ({_valid(num_layers)})"
            )
        if end >= num_layers:
            where = "" if start == end else f" (in '{token}')"
            raise LayerwiseError(
                f"{param}: layer {end}{where} is out of range; the model has {num_layers} decoder layers, "
                f"{_valid(num_layers)}"
            )
        layers.update(range(start, end + 1))
    return sorted(layers)


def _runs(layers: Iterable[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    for layer in sorted(set(layers)):
        if runs and layer == runs[-1][-1] + 1:
            runs[-1].append(layer)
        else:
            runs.append([layer])
    return runs


def format_layers(layers: Iterable[int]) -> str:
    """Compact form of a set of layers: ``[0, 1, 2, 3, 7]`` -> ``"0-3,7"`` (``""`` when empty)."""
    return ",".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in _runs(layers))


def _even_split(layers: Sequence[int], n: int) -> list[list[int]]:
    base, extra = divmod(len(layers), n)
    # Leftover layers go to the outer groups first: 0, n-1, 1, n-2, ...
    order = [i // 2 if i % 2 == 0 else n - 1 - i // 2 for i in range(n)]
    sizes = [base] * n
    for i in order[:extra]:
        sizes[i] += 1
    groups, start = [], 0
    for size in sizes:
        groups.append(list(layers[start:start + size]))
        start += size
    return groups


def _parse_group_token(token: str, text: str) -> list[int]:
    if _SINGLE.fullmatch(token):
        return [int(token)]
    if m := _RANGE.fullmatch(token):
        start, end = int(m.group(1)), int(m.group(2))
        if start > end:
            raise LayerwiseError(f"{GROUPS_PARAM} '{text}': range '{token}' is reversed (start > end); write '{end}-{start}'")
        return list(range(start, end + 1))
    raise LayerwiseError(
        f"{GROUPS_PARAM} '{text}': cannot read '{token}'; use 'auto', a number of groups (e.g. '4'), or "
        f"explicit groups such as '0-8,9-16' (one range per group) or '0-3 7;4-6' (groups separated by ';')"
    )


def split_layer_groups(layers: Sequence[int], groups: str | int | None = "auto") -> list[list[int]]:
    """Split the requested layers into groups (one GPU task each); see the module docstring."""
    requested = sorted(set(int(layer) for layer in layers))
    if not requested:
        raise ValueError("split_layer_groups needs at least one layer")
    if groups is None:
        groups = "auto"
    if isinstance(groups, bool):
        raise LayerwiseError(f"{GROUPS_PARAM} needs a value: 'auto', a number of groups, or explicit ranges such as '0-8,9-16'")
    text = str(groups).strip()
    if text.lower() == "auto":
        return _runs(requested)
    if isinstance(groups, int) or re.fullmatch(r"-?[0-9]+", text):
        n = int(text)
        if n < 1:
            raise LayerwiseError(f"{GROUPS_PARAM} {n}: the number of groups must be at least 1 (or use 'auto')")
        if n > len(requested):
            raise LayerwiseError(
                f"{GROUPS_PARAM} {n}: more groups than the {len(requested)} requested layers "
                f"({format_layers(requested)}); use at most {len(requested)}"
            )
        return _even_split(requested, n)
    if not text:
        raise LayerwiseError(f"{GROUPS_PARAM} is empty: give 'auto', a number of groups (e.g. '4'), or explicit ranges such as '0-8,9-16'")
    if ";" in text:
        parts = [p.strip() for p in text.split(";") if p.strip()]
        parsed = [sorted(set(x for t in _tokens(p) for x in _parse_group_token(t, text))) for p in parts]
    else:
        parts = _tokens(text)
        parsed = [_parse_group_token(t, text) for t in parts]
    if not parsed:
        raise LayerwiseError(f"{GROUPS_PARAM} '{text}' names no groups")
    wanted = set(requested)
    owner: dict[int, str] = {}
    for part, group in zip(parts, parsed):
        for layer in group:
            if layer not in wanted:
                raise LayerwiseError(
                    f"{GROUPS_PARAM} '{text}': layer {layer} (in group '{part}') is not one of the requested "
                    f"--layers ({format_layers(requested)})"
                )
            if layer in owner:
                raise LayerwiseError(
                    f"{GROUPS_PARAM} '{text}': layer {layer} is in two groups ('{owner[layer]}' and '{part}'); "
                    f"each requested layer must be in exactly one group"
                )
            owner[layer] = part
    missing = [layer for layer in requested if layer not in owner]
    if missing:
        raise LayerwiseError(
            f"{GROUPS_PARAM} '{text}': requested layers {format_layers(missing)} are in no group; the groups must "
            f"cover the requested --layers ({format_layers(requested)}) exactly once"
        )
    return sorted((g for g in parsed if g), key=lambda g: g[0])
