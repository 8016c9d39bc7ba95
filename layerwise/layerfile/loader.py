"""Open a published result without copying it: every layer of a language at once, memory-mapped.

    from layerwise.layerfile.loader import open_layers
    run = open_layers("results", "english")          # nothing is read until a tensor is touched
    x = run["activations"][12]                         # [N, T_max, H] (padded) of layer 12, an mmap view
    ids, kinds = run["token_ids"], run["token_kinds"]  # shared by every layer of the language

The returned dict has the keys of the seed's combined file `activations_{language}_all_layers.pt`
(`merge.COMBINED_KEYS`), so code written for that file works on it; the combined file itself
(`--combined_files`) costs one more copy of every byte and is off by default.

It also has `images`: the image file of every sample, from `metadata/samples.parquet`. After the results and
the images were moved (an rsync to a laptop), the recorded absolute paths no longer exist; give the folder that
now holds the images, and each is found by its path relative to the run's image root (`image_relative`):

    run = open_layers("results", "english", image_root="~/data/images")
    run["images"][0]                                  # Path of sample 0's image (absolute path if it exists)
"""
from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from layerwise.core import schema
from layerwise.core.errors import LayerwiseError
from layerwise.core.outdir import LAYER_DIR, METADATA_JSON
from layerwise.layerfile.reader import layer_file_from_dict
from layerwise.layerfile.store import load_layer_file

# Per-sample keys every layer file of one language shares
SHARED_KEYS = ("sample_ids", "genders", "lengths", "offsets", "token_ids", "token_kinds")
SETTINGS = ("hidden_size", "token_selection", "layout", "dtype", "model_id", "model_revision", "num_layers",
            "nan_policy")


# How many missing images an error lists
MAX_LISTED = 5


def image_locations(images: Sequence[str | os.PathLike]) -> tuple[str | None, list[str | None]]:
    """(image root, each image's path relative to it with '/' separators) of a run's absolute image paths.

    The root is the deepest folder that holds every image (`os.path.commonpath` of the images' folders), so
    that copying that one folder anywhere and giving its new place (`open_layers(..., image_root=)`) finds
    every image. It is computed from the verified samplesheet alone, on purpose: the user's samplesheet folder
    is not an input of PUBLISH_RESULTS, and recording it in plan.json or samplesheet.valid.csv (which -resume
    compares by content) would re-run every extraction unit whenever the samplesheet moved. (None, [None, ...])
    when there is no image or a path is not absolute (PREFLIGHT makes every path absolute).
    """
    paths = [os.path.normpath(os.fspath(p)) for p in images]
    if not paths or not all(os.path.isabs(p) for p in paths):
        return None, [None] * len(paths)
    root = os.path.commonpath([os.path.dirname(p) for p in paths])
    return root, [Path(os.path.relpath(p, root)).as_posix() for p in paths]


class SampleImages(Sequence):
    """The image file of every sample of an opened language, in sample order, found when read: the recorded
    absolute path if it exists, else `image_root` / its path relative to the run's image root; a
    LayerwiseError naming the file (and what was tried) if neither exists."""

    def __init__(self, sample_ids: Sequence[str], absolute: Sequence[str], relative: Sequence[str | None],
                 image_root: str | os.PathLike | None = None):
        self.sample_ids, self.absolute, self.relative = list(sample_ids), list(absolute), list(relative)
        self.image_root = Path(image_root).expanduser() if image_root is not None else None

    def __len__(self) -> int:
        return len(self.sample_ids)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self.find(j) for j in range(*i.indices(len(self)))]
        return self.find(i)

    def _candidate(self, i: int) -> Path | None:
        recorded = Path(self.absolute[i])
        if recorded.is_file():
            return recorded
        if self.image_root is not None and self.relative[i] is not None:
            moved = self.image_root / self.relative[i]
            if moved.is_file():
                return moved
        return None

    def _not_found(self, i: int) -> str:
        text = f"the image of sample {self.sample_ids[i]!r} was not found: {self.absolute[i]} does not exist"
        if self.relative[i] is None:
            return text + " (and metadata/samples.parquet records no path relative to an image root)"
        if self.image_root is not None:
            return text + f", nor does {self.image_root / self.relative[i]} (image_root + its image_relative)"
        return (text + f". If the images were moved, give the folder that now holds them: open_layers(..., "
                f"image_root=...), where this one is {self.relative[i]}")

    def find(self, i: int) -> Path:
        i = range(len(self))[i]                     # negative indices; IndexError beyond the end
        found = self._candidate(i)
        if found is None:
            raise LayerwiseError(self._not_found(i))
        return found

    def check(self) -> None:
        """Every image found, or one LayerwiseError naming the missing ones."""
        missing = [i for i in range(len(self)) if self._candidate(i) is None]
        if missing:
            listed = "\n  ".join(self._not_found(i) for i in missing[:MAX_LISTED])
            more = f"\n  ... and {len(missing) - MAX_LISTED} more" if len(missing) > MAX_LISTED else ""
            raise LayerwiseError(f"{len(missing)} of {len(self)} images not found:\n  {listed}{more}")


def sample_images(outdir: str | Path, language: str, sample_ids: Sequence[str],
                  image_root: str | os.PathLike | None = None) -> SampleImages | None:
    """The images of `language`'s samples, from `<outdir>/metadata/samples.parquet` (None, with a warning if the
    table is another run's, when it cannot say; with `image_root` given that is an error, and every image is
    checked now)."""
    import pandas as pd

    path = Path(outdir) / schema.SAMPLES_PARQUET
    if not path.is_file():
        if image_root is not None:
            raise LayerwiseError(f"image_root={image_root}: {path} is missing, so the images of the samples are "
                                 "not known (copy metadata/ with the layer files)")
        return None
    table = pd.read_parquet(path)
    part = table[table["language"] == language]
    if part["sample_id"].tolist() != list(sample_ids):
        problem = f"{path}: the samples of {language!r} are not those of the layer files, in their order"
        if image_root is not None:
            raise LayerwiseError(f"{problem}: not one run's files")
        warnings.warn(f"{problem} (not one run's files?): no images", stacklevel=3)
        return None
    if "image_relative" in part.columns:
        relative = part["image_relative"].tolist()
    else:   # a table written before image_relative existed: the same rule, on the same images
        _, every = image_locations(table["image"].tolist())
        relative = [r for r, mine in zip(every, table["language"] == language) if mine]
    images = SampleImages(sample_ids, part["image"].tolist(), relative, image_root)
    if image_root is not None:
        images.check()
    return images


def available_layers(outdir: str | Path, language: str) -> list[int]:
    """Layers of `language` present under `<outdir>/layer_checkpoints`."""
    prefix, suffix = "layer_", f"_{language}.pt"
    found = []
    for f in (Path(outdir) / LAYER_DIR).glob(f"layer_*_{language}.pt"):
        middle = f.name[len(prefix):-len(suffix)]
        if middle.isdigit():
            found.append(int(middle))
    return sorted(found)


def open_layers(outdir: str | Path, language: str, layers: Iterable[int] | None = None,
                check_status: bool = True, image_root: str | os.PathLike | None = None) -> dict[str, Any]:
    """All (or the given) layers of one language of a results folder, memory-mapped, in one dict.

    `images` (`SampleImages`, None when the folder has no metadata/samples.parquet) gives each sample's image
    file; `image_root`: the folder that now holds the run's images (after they were moved), checked at once.
    """
    outdir = Path(outdir)
    if check_status:
        try:
            status = json.loads((outdir / METADATA_JSON).read_text(encoding="utf-8")).get("status")
        except (OSError, ValueError):
            status = None
        if status != "passed":
            warnings.warn(f"{outdir / METADATA_JSON} says status {status!r}, not 'passed': the files may be "
                          "incomplete or from different runs", stacklevel=2)
    layers = sorted(set(int(x) for x in layers)) if layers is not None else available_layers(outdir, language)
    if not layers:
        raise LayerwiseError(f"{outdir / LAYER_DIR}: no layer files for language {language!r}")
    files = {}
    for layer in layers:
        path = outdir / LAYER_DIR / schema.layer_filename(layer, language)
        files[layer] = load_layer_file(path, mmap=True)
        layer_file_from_dict(files[layer], path)   # the format's checks (keys, layout, shapes), as every reader
    ref_layer, ref = layers[0], files[layers[0]]
    for layer, d in files.items():
        for key in SETTINGS + SHARED_KEYS:
            a, b = d[key], ref[key]
            same = torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
            if not same:
                raise LayerwiseError(f"layer {layer} and layer {ref_layer} of {language!r} differ in {key!r}: "
                                     "not one run's files")
    out: dict[str, Any] = {"language": language, "layers": layers,
                           "activations": {layer: d["activations"] for layer, d in files.items()},
                           "nan_counts": {layer: d["nan_counts"] for layer, d in files.items()}}
    out.update({k: ref[k] for k in SHARED_KEYS + SETTINGS})
    out["images"] = sample_images(outdir, language, out["sample_ids"], image_root)
    return out
