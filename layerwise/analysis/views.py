"""Views: which stored positions of a sample are pooled (by mean) into one vector.

A view is a set of token kinds (`schema.TOKEN_KINDS`, stored per position as `token_kinds`):

* ``image``   -- image soft tokens;
* ``prompt``  -- the instruction text of the user turn;
* ``caption`` -- the caption text (model turn);
* ``all``     -- every position except padding and ``<bos>`` (image, prompt, caption, template).

A view exists in a file only when its token selection keeps those positions (`SELECTION_VIEWS`);
otherwise it is skipped with a note. Files of the one-row selections hold one vector per sample:
`mean` files give the ``caption`` view (the stored mean over the model turn) and `last` files give
the extra view ``last`` (the last position). Files without `token_kinds` (written before kinds
were stored) can give only ``all`` (every stored position but the first, which is ``<bos>``).
"""
from __future__ import annotations

from layerwise.core import schema

KIND = schema.TOKEN_KINDS
VIEWS: dict[str, frozenset[int]] = {
    "image": frozenset({KIND["image"]}),
    "prompt": frozenset({KIND["prompt"]}),
    "caption": frozenset({KIND["caption"]}),
    "all": frozenset({KIND["image"], KIND["prompt"], KIND["caption"], KIND["template"]}),
}
DEFAULT_VIEWS = ("image", "prompt", "caption", "all")
SINGLE_ROW_VIEW = {"mean": "caption", "last": "last"}   # one stored row per sample: its view
ALL_VIEW_NAMES = DEFAULT_VIEWS + ("last",)

# Views that can read the caption's words: `caption` and `all` hold its tokens, and `last` (the
# sequence's last position, after the caption) attends to them. `image` and `prompt` come before the
# caption (user turn, then model turn) and cannot attend to it in a causal model: they stay clean when
# the label came from the caption (samplesheet `label_leaks`, run.py marks the probes).
CAPTION_READING_VIEWS = frozenset({"caption", "all", "last"})

# Views whose positions each token selection keeps (per-position selections).
SELECTION_VIEWS: dict[str, tuple[str, ...]] = {
    "all": ("image", "prompt", "caption", "all"),
    "text": ("prompt", "caption"),          # no image tokens, so no `image` and no complete `all`
    "caption": ("caption",),                 # the model turn only
}

# A plan maps a view name to the kinds it pools, or to None: "every stored row" (one-row
# selections) / "every stored row but the first" (`all` without token_kinds).
EVERY_ROW = "every_row"
SKIP_FIRST = "skip_first"


def plan_views(token_selection: str, has_kinds: bool, requested: tuple[str, ...] = DEFAULT_VIEWS
               ) -> tuple[dict[str, frozenset[int] | str], list[str]]:
    """(view -> kinds or EVERY_ROW / SKIP_FIRST, notes on the requested views that are skipped)."""
    notes: list[str] = []
    plan: dict[str, frozenset[int] | str] = {}
    if token_selection in SINGLE_ROW_VIEW:
        own = SINGLE_ROW_VIEW[token_selection]
        for view in requested:
            if view == own:
                plan[view] = EVERY_ROW
            else:
                notes.append(f"view {view!r} skipped: token selection {token_selection!r} stores one row per "
                             f"sample, which is the {own!r} view")
        if own not in requested:
            notes.append(f"token selection {token_selection!r} gives only the view {own!r}, which was not requested")
        return plan, notes
    contained = SELECTION_VIEWS.get(token_selection)
    if contained is None:
        return {}, [f"unknown token selection {token_selection!r}: no view can be pooled"]
    for view in requested:
        if view not in contained:
            why = ("its image tokens are not stored" if view in ("image", "all") else "its positions are not stored")
            notes.append(f"view {view!r} skipped: token selection {token_selection!r} does not contain it ({why})")
        elif not has_kinds:
            if view == "all":
                plan[view] = SKIP_FIRST
            else:
                notes.append(f"view {view!r} skipped: the file has no 'token_kinds' (written before token kinds "
                             "were stored), so its positions cannot be told apart; re-extract to get it")
        else:
            plan[view] = VIEWS[view]
    return plan, notes
