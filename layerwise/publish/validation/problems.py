"""The problems a validation finds, grouped by check (the report's table of checks)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# (key, description) of every check, in report order.
CHECKS: tuple[tuple[str, str], ...] = (
    ("files", "every expected (layer, language) file is present and none is unexpected"),
    ("checksums", "every file's sha256 equals the one its writer recorded (nothing changed it since)"),
    ("load", "every file loads with torch.load(weights_only=True) and has all layer-file keys"),
    ("names", "the layer and language keys of every file match its name"),
    ("shapes", "shapes agree with the layout; offsets == cumsum(lengths); padding is zero / -1"),
    ("samples", "every file holds the samplesheet's samples, in samplesheet order, with its genders"),
    ("lengths", "lengths and token ids are identical across the layers of each language"),
    ("hidden_size", "hidden_size == plan hidden size == last dimension of the activations"),
    ("settings", "model, revision, num_layers, token selection, layout, dtype, NaN policy agree"),
    ("finite", "no NaN/Inf stored in the activations (unless nan_policy is 'keep')"),
    ("summaries", "extraction summaries are readable JSON objects"),
    ("tokens", "the extraction units' token tables hold every stored row, with the layer files' token ids and kinds"),
)


@dataclass
class Problems:
    items: list[tuple[str, str]] = field(default_factory=list)

    def add(self, check: str, message: str) -> None:
        self.items.append((check, message))

    def __len__(self) -> int:
        return len(self.items)

    def by_check(self) -> list[dict[str, Any]]:
        return [
            {"name": key, "description": desc, "passed": not (msgs := [m for c, m in self.items if c == key]),
             "problems": msgs}
            for key, desc in CHECKS
        ]
