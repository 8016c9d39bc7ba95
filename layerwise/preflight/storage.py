"""PREFLIGHT's storage plan: every byte the run will write, where it lands, against the free space there.

Every position a sample stores is known before the first forward pass (the caption check counts them on
the exact sequence extraction builds), so the size of every layer file is known too: it is computed by
the writer's own layout planning (`ptfile.PtFileWriter`: the zip headers, the 64-byte alignment, the
pickled metadata and every tensor of `stream.layer_file_template`), not by a formula beside it. A padded
file is as wide as its longest sample (``[N, T_max, H]``), a ragged one holds ``sum(lengths)`` rows.

What lands where (a Nextflow task writes in its own work folder; the outdir gets the published files):

* work dir: the extraction units' layer files (one per unit and layer), the image-feature cache (under the
  work dir unless ``--image_cache`` puts it elsewhere; every family but Llama 3.2 Vision: each sample's
  image tokens from the caption check), the SAE folders (``--sae``) and the
  analysis' CKA scratch (transient: removed when the task ends, so it counts towards the peak);
* outdir: a single-shard layer file is a hard link to its work copy (no new byte) when the outdir and
  the work dir share a file system and ``--publish_dir_mode link``; otherwise a copy. Several shards are
  merged into a new file in the outdir. Combined files (``--combined_files``) are a new copy of every
  byte. SAE folders are hard-linked like layer files.

Files of this plan already on disk with exactly their projected size (unit files in the work dir's task
folders, published files in the outdir: what a ``-resume`` reuses) are credited, not counted twice.
The storage plan is written to its own file, never into plan.json: free space changes between runs, and
plan.json is compared by content to decide which extraction jobs re-run.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from layerwise.core import schema
from layerwise.core.atomic import atomic_write_text, temp_path
from layerwise.core.errors import LayerwiseError

STORAGE_PLAN_FILE = "storage_plan.json"
FORMAT = "layerwise.storage_plan/1"
# What shrinks a run, as the user gives it to the pipeline
SHRINK_OPTIONS = ("--token_selection", "--layers", "--layout ragged", "--dtype")
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
# Small files next to the big ones (summary.json, metrics, reports): counted as this much per folder
SMALL_FILES_BYTES = 64 << 10
NPY_HEADER_BYTES = 128          # numpy .npy header of one CKA Gram (np.lib.format, version 1.0)
# torch.save's container around one image-feature cache entry: the zip records of its 8 entries (local and
# central headers named after the ~80-character temporary file name), 64-byte alignment padding before each
# storage, the pickled keys and small values (measured: 2.9-3.1 kB with torch 2.x; the ids are counted apart)
CACHE_ENTRY_SLACK = 4 << 10


@dataclass(frozen=True)
class StorageSettings:
    """The run options that decide what is written (the pipeline parameter in each comment)."""

    token_selection: str = "all"          # --token_selection
    layout: str = "padded"                # --layout
    dtype: str = "auto"                   # --dtype
    device: str = "auto"                  # --device (only to resolve dtype auto)
    nan_policy: str = "zero"              # --nan_policy (stored in every file's metadata)
    combined: bool = False                # --combined_files
    publish_mode: str = "link"            # --publish_dir_mode
    image_cache: str | None = None        # the shared image-feature cache folder; None: --share_image_features false
    sae: Mapping | None = None            # sae_settings(): {"d_in", "d_sae", "dtype", "architecture", "per_language"}
    analysis_views: tuple[str, ...] | None = None   # --analysis_views; None: --analysis false
    cka_max_samples: int | None = 2000    # --analysis_cka_max_samples

    def check(self) -> None:
        for name, value, allowed in (("--token-selection", self.token_selection, schema.TOKEN_SELECTIONS),
                                     ("--layout", self.layout, schema.LAYOUTS),
                                     ("--dtype", self.dtype, schema.DTYPES),
                                     ("--nan-policy", self.nan_policy, schema.NAN_POLICIES)):
            if value not in allowed:
                raise LayerwiseError(f"{name} {value!r} is not one of {', '.join(allowed)}")


def resolve_dtype(dtype: str, device: str) -> tuple[str, str]:
    """(stored dtype, note): `auto` is bfloat16 on a GPU with bf16, float32 on a CPU (models.loading.resolve_dtype).
    PREFLIGHT runs on a CPU node and cannot see the extraction jobs' GPU: with a GPU device bf16 is assumed."""
    if dtype != "auto":
        return dtype, ""
    if device == "cpu":
        return "float32", "--dtype auto on the CPU: float32"
    return "bfloat16", ("--dtype auto: bfloat16 assumed (a GPU with bf16, e.g. A100/H100); "
                        "a V100 or a CPU stores float32, twice the layer files")


def sae_settings(options_json: str | os.PathLike, d_in: int, per_language: bool) -> dict:
    """What one SAE folder holds, from the SAE options PREFLIGHT is given (layerwise.sae.options owns them)."""
    from layerwise.sae.options import SAEOptions

    options = SAEOptions.from_mapping(json.loads(Path(options_json).read_text(encoding="utf-8")))
    return {"d_in": int(d_in), "d_sae": options.width(int(d_in)), "dtype": options.dtype,
            "architecture": options.architecture, "per_language": bool(per_language)}


# ----------------------------------------------------------------------------------------- exact file sizes
def _planned_bytes(name: str, obj: dict, streamed: Sequence) -> int:
    """The size of the file `PtFileWriter(name, obj, streamed)` writes: its layout is fixed before the first
    byte (`_setup` plans it and opens no file), so this is the writer's own figure, not a formula beside it."""
    from layerwise.layerfile.ptfile import PtFileWriter

    writer = PtFileWriter.__new__(PtFileWriter)
    writer._setup(name, obj, streamed, None, None, None)
    return int(writer.expected_bytes)


def _torch_dtype(name: str):
    import torch

    return getattr(torch, name)


def layer_file_bytes(layer: int, language: str, lengths: Sequence[int], sample_ids: Sequence[str],
                     genders: Sequence[str], *, layout: str, hidden: int, dtype: str, token_selection: str,
                     nan_policy: str, model_id: str, model_revision: str, num_layers: int) -> int:
    """Bytes of `layer_{layer}_{language}.pt` holding these samples (as extraction or a shard merge writes it)."""
    from layerwise.layerfile.stream import STREAMED, UnitLayout, layer_file_template

    meta = {"genders": list(genders), "language": language, "sample_ids": list(sample_ids),
            "token_selection": token_selection, "nan_policy": nan_policy, "model_id": model_id,
            "model_revision": model_revision, "num_layers": int(num_layers), "layer": int(layer)}
    obj = layer_file_template(UnitLayout(list(lengths), [], []), layout, hidden, _torch_dtype(dtype), meta)
    return _planned_bytes(schema.layer_filename(layer, language), obj, STREAMED)


def combined_file_bytes(language: str, layers: Sequence[int], lengths: Sequence[int], sample_ids: Sequence[str],
                        genders: Sequence[str], *, layout: str, hidden: int, dtype: str, token_selection: str,
                        model_id: str, model_revision: str, num_layers: int) -> int:
    """Bytes of `activations_{language}_all_layers.pt` (`publish.merge.combine_layers`'s object)."""
    import torch

    from layerwise.layerfile.ptfile import TensorSlot
    from layerwise.layerfile.stream import UnitLayout

    plan = UnitLayout(list(lengths), [], [])
    n, layers = len(plan.lengths), sorted(int(x) for x in layers)
    ids = [plan.total] if layout == "ragged" else [n, plan.t_max]
    obj = {
        "language": language, "layers": layers,
        "activations": {layer: TensorSlot(plan.activation_shape(layout, hidden), _torch_dtype(dtype)) for layer in layers},
        "hidden_size": int(hidden), "genders": list(genders), "sample_ids": list(sample_ids),
        "lengths": TensorSlot([n], torch.int64), "offsets": TensorSlot([n + 1], torch.int64),
        "token_ids": TensorSlot(ids, torch.int64), "token_kinds": TensorSlot(ids, torch.int8),
        "token_selection": token_selection, "layout": layout, "dtype": dtype, "model_id": model_id,
        "model_revision": model_revision, "num_layers": int(num_layers),
        "nan_counts": {layer: TensorSlot([n], torch.int64) for layer in layers},
    }
    # written under its temporary name, which names the archive inside (publish.outdir: core.atomic.temp_path)
    name = temp_path(schema.combined_filename(language)).name
    return _planned_bytes(name, obj, [("activations", layer) for layer in layers])


def payload_bytes(lengths: Sequence[int], layout: str, hidden: int, itemsize: int) -> int:
    """Activations + token ids (int64) + token kinds (int8) of one layer file, without its small records:
    for the what-if figures of other settings."""
    n = len(lengths)
    positions = sum(lengths) if layout == "ragged" else n * max(lengths, default=0)
    return positions * (hidden * itemsize + 9)


def image_cache_entry_bytes(image_tokens: int, hidden: int, itemsize: int, sample_ids: Sequence[str],
                            model_id: str = "", model_revision: str = "") -> int:
    """One shard's image-feature cache entry (`extract.images.encode_images`: {sample_ids, features [rows, H],
    offsets [N + 1] int64, model id and revision, ...} by torch.save), `image_tokens` the sum of its images'
    image tokens (one row each): the features and offsets exactly, the pickled sample ids (protocol 2, as
    torch.save pickles them) and the model strings, the container estimated (CACHE_ENTRY_SLACK)."""
    import pickle

    ids = [str(s) for s in sample_ids]
    return (int(image_tokens) * hidden * itemsize + 8 * (len(ids) + 1) + len(pickle.dumps(ids, protocol=2))
            + len(str(model_id).encode()) + len(str(model_revision).encode()) + CACHE_ENTRY_SLACK)


def sae_folder_bytes(sae: Mapping, samples: int) -> int:
    """One SAE folder: W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc [d_sae], b_dec [d_in] (+ threshold
    [d_sae] for jumprelu) in the SAE dtype (safetensors), plus cfg/split/metrics/training JSON (split.json
    lists every sample id)."""
    d_in, d_sae = int(sae["d_in"]), int(sae["d_sae"])
    params = 2 * d_in * d_sae + d_sae + d_in + (d_sae if sae.get("architecture") == "jumprelu" else 0)
    return params * DTYPE_BYTES[sae.get("dtype", "float32")] + 4096 + samples * 48 + SMALL_FILES_BYTES


# ----------------------------------------------------------------------------------------- free space
@dataclass
class FreeSpace:
    path: str                          # the folder asked about
    checked_at: str                    # its nearest existing folder (what statvfs saw)
    device: int                        # st_dev: two paths on one file system share it
    free_bytes: int                    # statvfs: blocks available to an unprivileged user
    quota_free_bytes: int | None = None  # what the user quota leaves there (None: no quota known)
    quota_note: str = ""

    @property
    def available(self) -> int:
        return self.free_bytes if self.quota_free_bytes is None else min(self.free_bytes, self.quota_free_bytes)


def nearest_existing(path: str | os.PathLike) -> Path:
    p = Path(os.path.abspath(os.fspath(path)))
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def free_space(path: str | os.PathLike) -> FreeSpace:
    """Free space of the file system that holds `path` (or would: its nearest existing ancestor), and the
    user quota there when `quota` reports one (best effort: no `quota`, no quota)."""
    where = nearest_existing(path)
    st = os.statvfs(where)
    free = FreeSpace(os.fspath(path), str(where), os.stat(where).st_dev, st.f_bavail * st.f_frsize)
    try:
        quota = user_quota_free(where)
    except Exception:   # noqa: BLE001 - optional: a quota tool that misbehaves never stops a run
        quota = None
    if quota is not None:
        free.quota_free_bytes, free.quota_note = quota
    return free


def user_quota_free(where: Path) -> tuple[int, str] | None:
    """(bytes the user's block quota leaves, a note) on the file system of `where`, from `quota -w`; None when
    `quota` is missing, reports nothing for that file system or cannot be read."""
    exe = shutil.which("quota")
    if exe is None:
        return None
    run = subprocess.run([exe, "-w"], capture_output=True, text=True, timeout=15)
    return parse_quota(run.stdout, os.stat(where).st_dev, _mount_points())


def _mount_points() -> dict[str, list[str]]:
    """device (first field of /proc/mounts) -> its mount points."""
    out: dict[str, list[str]] = {}
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2:
                out.setdefault(parts[0], []).append(parts[1].replace("\\040", " "))
    except OSError:
        pass
    return out


def parse_quota(text: str, st_dev: int, mounts: Mapping[str, list[str]]) -> tuple[int, str] | None:
    """The line of `quota -w` (1 KiB blocks: filesystem, blocks[*], quota, limit, ...) whose file system is the
    one with `st_dev`; the soft quota counts, else the hard limit; 0 means none."""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 4 or not parts[1].rstrip("*").isdigit():
            continue
        fs, used, soft, hard = parts[0], int(parts[1].rstrip("*")), parts[2], parts[3]
        if not (soft.isdigit() and hard.isdigit()):
            continue
        limit = int(soft) or int(hard)
        if not limit:
            continue
        for mount in mounts.get(fs, []) + ([fs] if fs.startswith("/") else []):
            try:
                if os.stat(mount).st_dev == st_dev:
                    return max(0, limit - used) * 1024, f"user quota on {fs}: {fmt_bytes(limit * 1024)}, " \
                                                         f"{fmt_bytes(used * 1024)} used"
            except OSError:
                continue
    return None


def fmt_bytes(n: int | float | None) -> str:
    """Decimal units, as disks and quotas are sold (1 GB = 10^9 bytes)."""
    if n is None:
        return "unknown"
    n = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"


# ----------------------------------------------------------------------------------------- the projection
@dataclass
class Item:
    key: str                       # layer_files, published, combined, image_cache, image_buffer, sae, sae_published, analysis
    what: str
    where: str                     # "work", "outdir" or "image_cache" (the folder it lands in)
    files: int
    bytes: int                     # projected size on disk
    new_bytes: int                 # what the run adds (0 for hard links and for files already on disk)
    present_bytes: int = 0         # files already there with exactly their projected size (credited)
    transient: bool = False        # removed again by the run (counts towards the peak)
    note: str = ""


@dataclass
class StoragePlan:
    settings: dict
    positions: dict = field(default_factory=dict)      # language -> {"samples", "stored", "mean", "max"}
    items: list[Item] = field(default_factory=list)
    layer_files: list[dict] = field(default_factory=list)   # the published layer files, one per (layer, language)
    alternatives: dict = field(default_factory=dict)         # layer-file payload of the run under other settings
    filesystems: list[dict] = field(default_factory=list)
    fits: bool | None = None       # None: no folder given to check
    ignored: bool = False          # --ignore_space_check
    stub: bool = False
    notes: list[str] = field(default_factory=list)
    units: list[dict] = field(default_factory=list)          # per extraction unit: {"id", "bytes", "files": {name: bytes}}

    def to_dict(self) -> dict:
        return {"format": FORMAT, **asdict(self)}

    def item(self, key: str) -> Item | None:
        return next((i for i in self.items if i.key == key), None)


def _rows(shard: Mapping) -> tuple[int, int]:
    a, b = (int(x) for x in str(shard["rows"]).split(":"))
    return a, b


def project(plan: Mapping, sample_ids: Sequence[str], genders: Sequence[str],
            lengths: Mapping[str, Sequence[int]] | None, settings: StorageSettings, *,
            feature_cache: bool = False, image_tokens: int | Sequence[int] | None = None,
            other_lengths: Mapping[str, Mapping[str, Sequence[int]]] | None = None,
            same_filesystem: bool = True) -> StoragePlan:
    """The bytes of the run `plan` describes (plan.json's structure), per item and where they land.

    `lengths`: per language, the positions each sample stores under `settings.token_selection`, in samplesheet
    order (None: unknown, e.g. a stub run without the tokenizer: the layer files are then not projected).
    `image_tokens`: the image tokens of each sample's image, in samplesheet order (the caption check's counts),
    or one number for every image (a fixed count: Gemma 3's `mm_tokens_per_image`); None: the image-feature
    cache is not projected.
    `other_lengths`: selection -> language -> lengths, for the what-if figures. `same_filesystem`: the outdir and
    the work dir share one (hard links possible)."""
    settings.check()
    model = plan["model"]
    hidden, num_layers = int(model["hidden_size"]), int(model["num_layers"])
    dtype, dtype_note = resolve_dtype(settings.dtype, settings.device)
    itemsize = DTYPE_BYTES[dtype]
    layers, languages, shards = list(plan["layers"]), list(plan["languages"]), list(plan["shards"])
    link = settings.publish_mode == "link" and same_filesystem
    n = len(sample_ids)
    out = StoragePlan(settings={**asdict(settings), "dtype_stored": dtype, "hard_links": link, "samples": n,
                                "layers": len(layers), "languages": languages, "shards": len(shards),
                                "hidden_size": hidden})
    if dtype_note:
        out.notes.append(dtype_note)
    common = dict(layout=settings.layout, hidden=hidden, dtype=dtype, token_selection=settings.token_selection,
                  model_id=str(model.get("id")), model_revision=str(model.get("revision")), num_layers=num_layers)

    if lengths is not None:
        sizes: dict[tuple[str, int, int], int] = {}      # (language, shard, layer) -> bytes of that unit file
        published = published_new = 0
        for language in languages:
            lens = [int(x) for x in lengths[language]]
            out.positions[language] = {"samples": len(lens), "stored": sum(lens),
                                       "mean": round(sum(lens) / len(lens), 1) if lens else 0,
                                       "max": max(lens, default=0)}
            for layer in layers:
                for shard in shards:
                    a, b = _rows(shard)
                    sizes[(language, int(shard["index"]), layer)] = layer_file_bytes(
                        layer, language, lens[a:b], sample_ids[a:b], genders[a:b], nan_policy=settings.nan_policy,
                        **common)
                if len(shards) == 1:
                    size, how = sizes[(language, int(shards[0]["index"]), layer)], "hard link" if link else "copy"
                else:
                    size, how = layer_file_bytes(layer, language, lens, sample_ids, genders,
                                                 nan_policy=settings.nan_policy, **common), "merge"
                published += size
                published_new += 0 if how == "hard link" else size
                out.layer_files.append({"file": schema.layer_filename(layer, language), "layer": layer,
                                        "language": language, "samples": len(lens), "positions": sum(lens),
                                        "t_max": max(lens, default=0), "bytes": size, "published_as": how})
        for unit in plan.get("units", []):
            files = {schema.layer_filename(layer, unit["language"]): sizes[(unit["language"], int(unit["shard"]), layer)]
                     for layer in unit["layers"]}
            out.units.append({"id": unit["id"], "bytes": sum(files.values()), "files": files})
        unit_bytes = sum(sizes.values())
        what = f"layer files ({len(layers)} layers x {len(languages)} languages" + \
               (f" x {len(shards)} shards)" if len(shards) > 1 else ")")
        out.items.append(Item("layer_files", what, "work", len(sizes), unit_bytes, unit_bytes,
                              note="the extraction jobs' files"))
        how = out.layer_files[0]["published_as"] if out.layer_files else "hard link"
        out.items.append(Item("published", "published layer files (layer_checkpoints/)", "outdir",
                              len(out.layer_files), published, published_new,
                              note={"hard link": "hard links: no new bytes",
                                    "copy": "copies (other file system or --publish_dir_mode copy)",
                                    "merge": "shards merged into new files"}[how]))
        if settings.combined:
            size = sum(combined_file_bytes(language, layers, lengths[language], sample_ids, genders, **common)
                       for language in languages)
            out.items.append(Item("combined", "combined files (--combined_files true)", "outdir", len(languages),
                                  size, size, note="one more copy of every layer file"))
        out.alternatives = _alternatives(lengths, other_lengths or {}, settings, layers, languages, hidden, itemsize)
    else:
        out.notes.append("token counts unknown (a stub run without the tokenizer): layer files not projected")

    if feature_cache and settings.image_cache and image_tokens:
        # an entry per shard holds one row per image token of each of its samples' images (features [rows, H]);
        # it is filled through a scratch file of those rows, beside it until the entry is saved
        per_image = [int(image_tokens)] * n if isinstance(image_tokens, int) else [int(x) for x in image_tokens]
        if len(per_image) != n:
            raise LayerwiseError(f"image token counts of {len(per_image)} samples for {n} samples")
        entries = [image_cache_entry_bytes(sum(per_image[a:b]), hidden, itemsize, sample_ids[a:b],
                                           str(model.get("id")), str(model.get("revision")))
                   for a, b in (_rows(s) for s in shards)]
        fewest, most = min(per_image, default=0), max(per_image, default=0)
        tokens = str(fewest) if fewest == most else f"{fewest}-{most}"
        out.items.append(Item("image_cache", "image-feature cache", "image_cache", len(entries), sum(entries),
                              sum(entries), note=f"[{tokens}, {hidden}] {dtype} per image"))
        out.items.append(Item("image_buffer", "image-feature scratch (transient)", "image_cache", len(entries),
                              sum(entries), sum(entries), transient=True,
                              note="while an entry is saved"))
    if settings.sae:
        count = len(layers) * (len(languages) if settings.sae.get("per_language") else 1)
        size = count * sae_folder_bytes(settings.sae, n)
        out.items.append(Item("sae", f"SAE folders (--sae, d_sae {settings.sae['d_sae']})", "work", count, size, size,
                              note=f"{settings.sae.get('dtype', 'float32')}, one per layer"
                                   + (" and language" if settings.sae.get("per_language") else "")))
        out.items.append(Item("sae_published", "published SAE folders (sae/)", "outdir", count, size,
                              0 if link else size, note="hard links" if link else "copies"))
    if settings.analysis_views is not None:
        n_cka = min(n, settings.cka_max_samples) if settings.cka_max_samples else n
        views = 1 if settings.token_selection in ("mean", "last") else max(1, len(settings.analysis_views))
        grams = len(layers) * len(languages) * views
        out.items.append(Item("analysis", "analysis scratch (CKA Grams, transient)", "work", grams,
                              grams * (n_cka * n_cka * 4 + NPY_HEADER_BYTES),
                              grams * (n_cka * n_cka * 4 + NPY_HEADER_BYTES), transient=True,
                              note=f"{n_cka}x{n_cka} float32 per layer, language, view"))
    return out


def _alternatives(lengths, other_lengths, settings: StorageSettings, layers, languages, hidden: int,
                  itemsize: int) -> dict:
    """Layer-file payload (activations + token ids and kinds) of the whole run under other settings."""
    def total(by_language, layout, size=itemsize):
        return len(layers) * sum(payload_bytes(by_language[lang], layout, hidden, size) for lang in languages)

    alt = {"this_run": total(lengths, settings.layout), "per_layer": total(lengths, settings.layout) // max(1, len(layers))}
    if settings.layout == "padded":
        alt["layout_ragged"] = total(lengths, "ragged")
    if itemsize == 4:
        alt["dtype_bfloat16"] = total(lengths, settings.layout, 2)
    selections = {sel: total(by_language, settings.layout) for sel, by_language in other_lengths.items()
                  if sel != settings.token_selection and all(lang in by_language for lang in languages)}
    if settings.token_selection not in ("mean", "last"):
        selections.setdefault("mean", total({lang: [1] * len(lengths[lang]) for lang in languages}, settings.layout))
    alt["token_selection"] = selections
    return alt


# ----------------------------------------------------------------------------------------- what is already there
def present_files(storage: StoragePlan, outdir: str | None, work_dir: str | None) -> dict[str, int]:
    """Bytes of this plan's files already on disk with exactly their projected size, per item key: unit files
    in the work dir's task folders (<work>/xx/yyyy.../<unit id>/<file>) and published files in the outdir
    (merged or copied ones; a hard link adds nothing anyway), which a -resume reuses. Name and size are the
    test: a file that the -resume recomputes after all (an input changed, the size did not) is not caught."""
    found = {"layer_files": 0, "published": 0}
    if outdir:
        for rec in storage.layer_files:
            p = Path(outdir) / "layer_checkpoints" / rec["file"]
            if rec["published_as"] != "hard link" and p.is_file() and p.stat().st_size == rec["bytes"]:
                found["published"] += rec["bytes"]
    if work_dir and storage.units and Path(work_dir).is_dir():
        want = {(unit["id"], name): size for unit in storage.units for name, size in unit["files"].items()}
        units = {unit["id"] for unit in storage.units}
        seen: set[tuple[str, str]] = set()
        for top in _scandir(work_dir):
            if len(top.name) != 2 or not top.is_dir():
                continue
            for task in _scandir(top.path):
                for unit in _scandir(task.path):
                    if unit.name not in units:
                        continue
                    for f in _scandir(unit.path):
                        key = (unit.name, f.name)
                        if key in want and key not in seen and f.is_file() and f.stat().st_size == want[key]:
                            seen.add(key)
                            found["layer_files"] += want[key]
    return found


def _scandir(path) -> list[os.DirEntry]:
    try:
        with os.scandir(path) as it:
            return list(it)
    except OSError:
        return []


# ----------------------------------------------------------------------------------------- the disk check
def check_space(storage: StoragePlan, free: Mapping[str, FreeSpace], present: Mapping[str, int] | None = None) -> None:
    """Credit files already there (`present`: item key -> bytes), group the items by file system (`free`:
    "outdir" / "work" / "image_cache" -> FreeSpace; same st_dev, one file system) and compare."""
    for key, credit in (present or {}).items():
        item = storage.item(key)
        if item is not None and credit:
            item.present_bytes = min(credit, item.new_bytes)
            item.new_bytes -= item.present_bytes
    groups: dict[int, dict] = {}
    for where, fs in free.items():
        g = groups.setdefault(fs.device, {"paths": {}, "free": fs})
        g["paths"][where] = fs.path
    storage.filesystems = []
    for g in groups.values():
        items = [i for i in storage.items if i.where in g["paths"]]
        need = sum(i.new_bytes for i in items)
        fs: FreeSpace = g["free"]
        storage.filesystems.append({
            "paths": g["paths"], "checked_at": fs.checked_at, "needed_bytes": need,
            "already_present_bytes": sum(i.present_bytes for i in items),
            "free_bytes": fs.free_bytes, "quota_free_bytes": fs.quota_free_bytes, "quota": fs.quota_note,
            "available_bytes": fs.available, "fits": need <= fs.available,
            "needs": {i.what: i.new_bytes for i in items if i.new_bytes},
        })
    storage.fits = all(f["fits"] for f in storage.filesystems) if storage.filesystems else None


def plan_storage(plan: Mapping, sample_ids: Sequence[str], genders: Sequence[str],
                 lengths: Mapping[str, Sequence[int]] | None, settings: StorageSettings, *,
                 outdir: str | None = None, work_dir: str | None = None, **kwargs) -> StoragePlan:
    """project + present_files + check_space: what PREFLIGHT runs (free space via `free_space`)."""
    paths = {"outdir": outdir, "work": work_dir,
             "image_cache": settings.image_cache if kwargs.get("feature_cache") else None}
    free = {where: free_space(path) for where, path in paths.items() if path}
    same = "outdir" not in free or "work" not in free or free["outdir"].device == free["work"].device
    storage = project(plan, sample_ids, genders, lengths, settings, same_filesystem=same, **kwargs)
    storage.settings.update(outdir=outdir, work_dir=work_dir)
    check_space(storage, free, present_files(storage, outdir, work_dir))
    return storage


def refusal(storage: StoragePlan) -> str:
    """The error when the run does not fit: per file system the projected and the free bytes, and what shrinks it."""
    lines = ["not enough disk space for this run (projected before any GPU job; details in storage_plan.json):"]
    names = {"work": "the work dir", "outdir": "the outdir", "image_cache": "the image-feature cache"}
    for fs in storage.filesystems:
        if fs["fits"]:
            continue
        where = " and ".join(f"{names[w]} {p}" for w, p in fs["paths"].items())
        parts = ", ".join(f"{what} {fmt_bytes(b)}" for what, b in fs["needs"].items())
        have = (f"; {fmt_bytes(fs['already_present_bytes'])} of this run's files already there are not counted"
                if fs["already_present_bytes"] else "")
        quota = f" (the disk has {fmt_bytes(fs['free_bytes'])}; {fs['quota']})" if fs["quota"] else ""
        lines.append(f"  - file system of {where}: projected {fmt_bytes(fs['needed_bytes'])} ({parts}){have}; "
                     f"free {fmt_bytes(fs['available_bytes'])}{quota}")
    lines.append("  To shrink the run: " + shrink_hint(storage) + ".")
    lines.append("  Or free space, or run with -w / --outdir on a larger file system; --ignore_space_check runs anyway.")
    return "\n".join(lines)


def shrink_hint(storage: StoragePlan) -> str:
    alt, s = storage.alternatives, storage.settings
    if not alt:
        return ", ".join(SHRINK_OPTIONS)
    hints = []
    smaller = {k: v for k, v in alt.get("token_selection", {}).items() if v < alt["this_run"]}
    if smaller:
        hints.append("--token_selection " + ", ".join(
            f"{k} ({fmt_bytes(v)})" for k, v in sorted(smaller.items(), key=lambda kv: -kv[1])))
    hints.append(f"--layers (each layer {fmt_bytes(alt['per_layer'])})")
    if "layout_ragged" in alt:
        hints.append(f"--layout ragged ({fmt_bytes(alt['layout_ragged'])}: no padding to the longest sample)")
    hints.append(f"--dtype bfloat16 ({fmt_bytes(alt['dtype_bfloat16'])})" if "dtype_bfloat16" in alt
                 else f"--dtype (the files are {s['dtype_stored']} already)")
    return "; ".join(hints) + f"; layer files now {fmt_bytes(alt['this_run'])}"


def table(storage: StoragePlan) -> str:
    """The short table PREFLIGHT prints."""
    s = storage.settings
    rows = [f"storage    --token_selection {s['token_selection']}, --layout {s['layout']}, {s['dtype_stored']}"
            + (" (each file padded to its longest sample)" if s["layout"] == "padded" else "")]
    for language, p in storage.positions.items():
        rows.append(f"           {language}: positions per sample mean {p['mean']}, longest {p['max']}")
    width = max([len(i.what) for i in storage.items] + [4])
    rows.append(f"           {'item':<{width}}  {'where':<11} {'files':>6} {'size':>9} {'new':>9}")
    for i in storage.items:
        rows.append(f"           {i.what:<{width}}  {i.where:<11} {i.files:>6} {fmt_bytes(i.bytes):>9} "
                    f"{fmt_bytes(i.new_bytes):>9}  {i.note}".rstrip())
    for fs in storage.filesystems:
        where = " + ".join(f"{w} {p}" for w, p in fs["paths"].items())
        have = f" ({fmt_bytes(fs['already_present_bytes'])} already there)" if fs["already_present_bytes"] else ""
        rows.append(f"disk       {where}: needs {fmt_bytes(fs['needed_bytes'])}{have}, free "
                    f"{fmt_bytes(fs['available_bytes'])}" + (f" ({fs['quota']})" if fs["quota"] else "")
                    + (": fits" if fs["fits"] else ": DOES NOT FIT"))
    rows += [f"note       {n}" for n in storage.notes]
    return "\n".join(rows)


def write_storage_plan(storage: StoragePlan, path: str | os.PathLike) -> Path:
    path = Path(path)
    atomic_write_text(path, json.dumps(storage.to_dict(), indent=2, ensure_ascii=False) + "\n")
    return path


# ----------------------------------------------------------------------------------------- PREFLIGHT's side
def selection_lengths(stats: Mapping[str, Mapping], selection: str, languages: Sequence[str], n: int, *,
                      processor=None, prompts: Mapping[str, str] | None = None, df=None, family=None) -> dict:
    """Per language, the positions each sample stores under `selection`, from the caption check's counts
    (`caption_check.check_captions`: the whole sequence and the model turn); `text` is measured again with
    the same checker (the sequence less its image tokens)."""
    if selection == "all":
        return {lang: list(stats[lang]["positions"]) for lang in languages}
    if selection == "caption":
        return {lang: list(stats[lang]["caption_positions"]) for lang in languages}
    if selection in ("mean", "last"):
        return {lang: [1] * n for lang in languages}
    from layerwise.preflight.caption_check import CaptionChecker

    checker = CaptionChecker(processor, family)
    out = {}
    for lang in languages:
        measured = checker.measure(prompts[lang], [str(c) for c in df[schema.caption_column(lang)].tolist()],
                                   images=df[schema.IMAGE].tolist())
        out[lang] = [m["text"] for m, _ in measured]
    return out


def settings_from_args(args, d_in: int) -> StorageSettings:
    """The settings of `layerwise-preflight`'s storage options (`args`: its argparse namespace)."""
    views = None if args.analysis_views is None else tuple(v for v in str(args.analysis_views).replace(",", " ").split() if v)
    return StorageSettings(
        token_selection=args.token_selection, layout=args.layout, dtype=args.dtype, device=args.device,
        nan_policy=args.nan_policy, combined=args.combined, publish_mode=args.publish_mode,
        image_cache=args.image_cache or None,
        sae=sae_settings(args.sae_options, d_in, args.sae_per_language) if args.sae_options else None,
        analysis_views=views, cka_max_samples=args.analysis_cka_max_samples or None)


def for_preflight(args, plan: Mapping, df, info: Mapping, stats: Mapping | None, processor=None,
                  prompts: Mapping[str, str] | None = None) -> StoragePlan:
    """The storage plan of a PREFLIGHT run (`args`: layerwise-preflight's options; `stats`: check_captions'
    counts, None in a stub run, which then counts with the tokenizer if it loads and never fails on space)."""
    from layerwise.models.families import FAMILIES

    family = FAMILIES.get(info.get("model_type"))
    settings = settings_from_args(args, int(info["hidden_size"]))
    settings.check()
    languages, n = list(plan["languages"]), len(df)
    image_tokens = info.get("image_tokens")
    if args.stub:
        try:   # the tokenizer only, as the caption check loads it; a stub without one still plans
            from layerwise.core.prompts import load_prompts
            from layerwise.models.loading import load_config
            from layerwise.preflight.caption_check import check_captions
            from layerwise.preflight.model_check import load_processor

            processor = load_processor(args.model, args.revision)
            prompts = load_prompts(args.prompts, info["model_type"])
            stats = check_captions(df, processor, prompts, languages, None, family=family)
            image_tokens = image_tokens or getattr(load_config(args.model, args.revision), "mm_tokens_per_image", None)
        except Exception:   # noqa: BLE001 - a stub run plans without token counts
            stats = None
    lengths = other = None
    if stats is not None:
        lengths = selection_lengths(stats, settings.token_selection, languages, n, processor=processor,
                                    prompts=prompts, df=df, family=family)
        other = {sel: selection_lengths(stats, sel, languages, n) for sel in ("all", "caption")}
        # the cache holds each sample's image once, whatever the language: its image tokens per sample
        counts = stats[languages[0]].get("image_tokens") if languages else None
        if counts is not None and all(c is not None for c in counts):
            image_tokens = [int(c) for c in counts]
    storage = plan_storage(plan, df[schema.SAMPLE_ID].astype(str).tolist(), df[schema.GENDER].astype(str).tolist(),
                           lengths, settings, outdir=args.outdir_path, work_dir=args.work_dir,
                           feature_cache=bool(family and family.feature_cache), image_tokens=image_tokens,
                           other_lengths=other)
    storage.stub = bool(args.stub)
    if storage.fits is False and (args.ignore_space_check or args.stub):
        storage.ignored = True
        storage.notes.append("does not fit: " + ("a stub run is never refused" if args.stub
                                                 else "--ignore_space_check given, running anyway"))
    return storage
