"""PREFLIGHT's storage plan (layerwise/preflight/storage.py): projected bytes against the files the real writers
write, and the disk check of `layerwise-preflight` (in-process, free space monkeypatched; no Nextflow)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from layerwise.core.atomic import temp_path
from layerwise.core.schema import combined_filename, layer_filename
from layerwise.preflight import storage
from tests.support import layer_file_factory as lff
from tests.support.command_runner import run_in_process

SHRINKERS = ("--token_selection", "--layers", "--layout ragged", "--dtype", "--ignore_space_check")


def preflight(capsys, out: Path, sheet: Path, model: Path, *extra) -> tuple[int, str, str, dict | None]:
    """`layerwise-preflight` in-process: (exit status, stdout, stderr, storage_plan.json or None)."""
    args = ["--samplesheet", sheet, "--model", model, "--layers", "0,1", "--languages", "english,arabic",
            "--samples-per-task", "6", "--skip-image-check", "--out-dir", out, *extra]
    code, stdout, stderr = run_in_process("preflight", args, capsys)
    path = out / storage.STORAGE_PLAN_FILE
    return code, stdout, stderr, json.loads(path.read_text()) if path.is_file() else None


def item(plan: dict, key: str) -> dict:
    return next(i for i in plan["items"] if i["key"] == key)


@pytest.fixture
def disk(monkeypatch):
    """Set the free bytes (and file systems) `free_space` reports: disk(free, {"outdir": 1, "work": 2})."""
    def set_free(free: int, devices: dict | None = None):
        def fake(path):
            kind = "outdir" if "results" in str(path) else "work"
            return storage.FreeSpace(str(path), str(path), (devices or {}).get(kind, 1), free)
        monkeypatch.setattr(storage, "free_space", fake)
    return set_free


# ------------------------------------------------------------------ projected bytes == the real writers' files
@pytest.fixture(scope="module")
def models(tiny_model_dir):
    from layerwise.models.loading import load_model

    return {dtype: load_model(str(tiny_model_dir), dtype=dtype, device="cpu") for dtype in ("float32", "bfloat16")}


@pytest.mark.parametrize("selection,layout,dtype", [("all", "padded", "float32"), ("text", "ragged", "bfloat16"),
                                                    ("caption", "padded", "bfloat16")])
def test_projection_is_the_size_of_the_files_extraction_and_publishing_write(
        capsys, tmp_path, samplesheet, tiny_model_dir, models, selection, layout, dtype):
    """The real extraction of every unit of a 2-shard plan, the shard merge and the combined file: their sizes on
    disk (os.path.getsize) are the projection, to the byte. Exact, no tolerance: the projection is the writer's
    own layout planning (zip records, 64-byte alignment, pickled metadata), and PREFLIGHT knows every input of it
    (token counts from the caption check, sample ids, genders, model id and revision, settings). `mean` and
    `last` store one position per sample: test_padded_files_are_as_wide_as_their_longest_sample covers any length."""
    from layerwise.extract.unit import UnitConfig, run_unit
    from layerwise.publish.merge import combine_layers, merge_shards

    code, _, stderr, plan = preflight(capsys, tmp_path / "pf", samplesheet, tiny_model_dir, "--token-selection",
                                      selection, "--layout", layout, "--dtype", dtype, "--combined", "--layers", "0")
    assert code == 0, stderr
    units = json.loads((tmp_path / "pf" / "plan.json").read_text())["units"]
    assert len(units) == 4 and plan["settings"]["shards"] == 2 and plan["settings"]["layers"] == 1
    written = 0
    for u in units:
        run_unit(UnitConfig(samplesheet=str(tmp_path / "pf" / "units" / u["sheet"]), model=str(tiny_model_dir),
                            language=u["language"], layers=u["layers_str"], out_dir=str(tmp_path / u["id"]),
                            dtype=dtype, token_selection=selection, layout=layout, device="cpu", batch_size=6,
                            image_cache=str(tmp_path / "image-cache"), model_fingerprint="test"),
                 loaded=models[dtype])
        written += sum(os.path.getsize(tmp_path / u["id"] / layer_filename(layer, u["language"])) for layer in u["layers"])
    assert item(plan, "layer_files")["bytes"] == written

    merged = combined = 0
    for language in ("english", "arabic"):
        files = []
        for layer in (0,):
            name = layer_filename(layer, language)
            info = merge_shards([tmp_path / f"L0_{language}_s{s}" / name for s in (0, 1)],
                                tmp_path / "merged" / name, layer, language)
            assert info["bytes"] == os.path.getsize(tmp_path / "merged" / name)
            rec = next(f for f in plan["layer_files"] if f["file"] == name)
            assert (rec["bytes"], rec["published_as"]) == (info["bytes"], "merge")
            merged += info["bytes"]
            files.append(tmp_path / "merged" / name)
        out = temp_path(tmp_path / combined_filename(language))      # the name PUBLISH_RESULTS writes it under
        combined += combine_layers(files, out, language)["bytes"]
        assert combined and os.path.getsize(out) > 0
    assert item(plan, "published")["bytes"] == merged
    assert item(plan, "combined")["bytes"] == combined


def test_padded_files_are_as_wide_as_their_longest_sample(tmp_path):
    """Independent of the projection: the padded file minus the ragged one is the padding, N * T_max - sum(lengths)
    positions of H values + an int64 token id + an int8 kind, up to the 64-byte alignment of the 3 tensors that
    differ (<= 3 * 63 bytes) and their pickled shapes (a few bytes)."""
    ids = lff.sample_ids(9)
    samples = lff.make_samples(3, "english", ids, hidden_size=48)
    samples[4].rows = torch.randn(40, 48)      # one long sample: every other one is padded to 40 positions
    samples[4].token_ids = torch.arange(40)
    samples[4].token_kinds = torch.full((40,), 4, dtype=torch.int8)
    lengths = [s.length for s in samples]
    sizes = {}
    for layout in ("padded", "ragged"):
        for dtype, itemsize in ((torch.float32, 4), (torch.bfloat16, 2)):
            path = lff.write_layer_file(tmp_path / layout / str(dtype) / layer_filename(3, "english"), 3, "english",
                                        samples, dtype=dtype, layout=layout)
            sizes[layout, itemsize] = os.path.getsize(path)
            projected = storage.layer_file_bytes(
                3, "english", lengths, ids, [s.gender for s in samples], layout=layout, hidden=48,
                dtype=str(dtype).removeprefix("torch."), token_selection="all", nan_policy="zero",
                model_id=lff.MODEL_ID, model_revision=lff.MODEL_REVISION, num_layers=lff.NUM_LAYERS)
            assert projected == sizes[layout, itemsize]
    for itemsize in (4, 2):
        padding = len(lengths) * max(lengths) - sum(lengths)
        assert padding == 9 * 40 - sum(lengths) and padding > 200
        extra = sizes["padded", itemsize] - sizes["ragged", itemsize]
        assert abs(extra - padding * (48 * itemsize + 8 + 1)) <= 3 * 63 + 16
    assert sizes["padded", 4] - sizes["padded", 2] == pytest.approx(9 * 40 * 48 * 2, abs=128)


def test_seed_job_items(tmp_path):
    """The fixed-size items at the seed's scale: image-feature cache (Gemma 3: 256 x 2560 per image), SAE folders
    (W_enc, W_dec, biases, float32), CKA Grams (2000^2 float32 per layer, language and view)."""
    n = 2000
    plan = {"model": {"id": "google/gemma-3-4b-it", "revision": "0" * 40, "num_layers": 34, "hidden_size": 2560},
            "layers": list(range(34)), "languages": ["english", "arabic"], "shards": [{"index": 0, "rows": f"0:{n}"}]}
    ids = [f"s{i:05d}" for i in range(n)]
    sae = {"d_in": 2560, "d_sae": 10240, "dtype": "float32", "architecture": "topk", "per_language": False}
    settings = storage.StorageSettings(image_cache=str(tmp_path), sae=sae, analysis_views=("image", "prompt", "caption", "all"))
    sp = storage.project(plan, ids, ["male"] * n, {"english": [278] * n, "arabic": [278] * n}, settings,
                         feature_cache=True, image_tokens=256)
    assert sp.settings["dtype_stored"] == "bfloat16" and sp.notes       # auto on a GPU: bf16, said so
    layer = item(sp.to_dict(), "layer_files")
    assert layer["files"] == 68
    assert 0 <= layer["bytes"] - 68 * n * 278 * (2560 * 2 + 9) <= 68 * 200_000   # payload + small records
    assert item(sp.to_dict(), "published")["new_bytes"] == 0                        # hard links
    cache = item(sp.to_dict(), "image_cache")["bytes"]
    assert n * 256 * 2560 * 2 < cache < n * 256 * 2560 * 2 + 200_000
    sae_bytes = item(sp.to_dict(), "sae")["bytes"]
    assert 34 * (2 * 2560 * 10240 + 10240 + 2560) * 4 < sae_bytes < 34 * (2 * 2560 * 10240 * 4 + 4_000_000)
    assert item(sp.to_dict(), "analysis")["bytes"] == 34 * 2 * 4 * (n * n * 4 + storage.NPY_HEADER_BYTES)
    ragged = sp.alternatives["layout_ragged"]
    assert ragged == sp.alternatives["this_run"]          # every sample equally long: no padding to save


CACHE_SIZES = ((64, 64), (96, 48), (48, 80), (80, 80), (64, 32))   # per-image families: several token counts


@pytest.fixture(scope="module")
def sized_sheet(tmp_path_factory, fixture_dir) -> Path:
    """Five samples of the fixture data with images of several sizes (Qwen, LLaVA-NeXT and Idefics3/SmolVLM give
    each its own number of image tokens)."""
    from tests.support.sheets import resized_sheet

    return resized_sheet(fixture_dir, tmp_path_factory.mktemp("storage-cache-data"), CACHE_SIZES)


@pytest.mark.parametrize("model_type", ["gemma3", "qwen2_vl", "qwen2_5_vl", "llava", "llava_next", "idefics3",
                                        "smolvlm", "paligemma"])
def test_image_cache_projection_is_the_size_of_the_entries_extraction_writes(capsys, tmp_path, fixture_dir,
                                                                             sized_sheet, model_type):
    """PREFLIGHT's image-feature cache (2 shards: 3 + 2 samples) against the entries the extraction units write.

    Counted exactly: the features (each sample's image tokens from the caption check x H x dtype), the offsets
    and the pickled sample ids; estimated: torch.save's container (zip records named after the temporary file,
    64-byte alignment, pickled keys), as the constant CACHE_ENTRY_SLACK (4 KiB; torch.save uses 2.9-3.1 kB).
    So each entry is projected at or above its size and at most 2 kB above it (the slack less the smallest
    container). That band is wider than one image-token row of these tiny models, so the counted part is also
    checked to the byte: the projection is what the entries' own row counts and sample ids give."""
    from layerwise.extract.unit import UnitConfig, run_unit
    from layerwise.models.loading import load_model

    model_dir = fixture_dir / "families" / model_type
    cache = tmp_path / "cache"
    args = ["--samplesheet", sized_sheet, "--model", model_dir, "--layers", "0", "--languages", "english",
            "--samples-per-task", "3", "--out-dir", tmp_path / "pf", "--dtype", "float32", "--device", "cpu",
            "--image-cache", cache]
    code, _, stderr = run_in_process("preflight", args, capsys)
    assert code == 0, stderr
    plan = json.loads((tmp_path / "pf" / storage.STORAGE_PLAN_FILE).read_text())
    units = json.loads((tmp_path / "pf" / "plan.json").read_text())["units"]
    assert len(units) == 2 and plan["settings"]["shards"] == 2
    loaded = load_model(str(model_dir), dtype="float32", device="cpu")
    model = json.loads((tmp_path / "pf" / "plan.json").read_text())["model"]
    feature_bytes = from_entries = 0
    for u in units:
        summary = run_unit(UnitConfig(samplesheet=str(tmp_path / "pf" / "units" / u["sheet"]), model=str(model_dir),
                                      language=u["language"], layers=u["layers_str"], out_dir=str(tmp_path / u["id"]),
                                      dtype="float32", device="cpu", batch_size=2, image_cache=str(cache),
                                      model_fingerprint="test"), loaded=loaded)
        assert summary["image_features"]["cache_hit"] is False
        entry = torch.load(summary["image_features"]["cache_file"], map_location="cpu", weights_only=True, mmap=True)
        feature_bytes += entry["features"].numel() * entry["features"].element_size()
        from_entries += storage.image_cache_entry_bytes(entry["features"].shape[0], loaded.hidden_size, 4,
                                                        entry["sample_ids"], model["id"], model["revision"])
    entries = sorted(cache.glob("*.pt"))
    real = sum(os.path.getsize(e) for e in entries)
    projected, scratch = item(plan, "image_cache"), item(plan, "image_buffer")
    assert projected["files"] == len(entries) == 2 and scratch["bytes"] == projected["bytes"]
    print(f"{model_type}: image cache projected {projected['bytes']} B, written {real} B "
          f"(features {feature_bytes} B)")
    assert 0 <= projected["bytes"] - real <= 2 * 2048, (model_type, projected["bytes"], real)
    assert projected["bytes"] == from_entries, model_type


# ------------------------------------------------------------------ the disk check of layerwise-preflight
def test_too_little_space_is_refused_naming_both_numbers_and_what_shrinks_the_run(
        capsys, tmp_path, samplesheet, tiny_model_dir, disk):
    disk(free=50_000)
    out = tmp_path / "pf"
    code, stdout, stderr, plan = preflight(capsys, out, samplesheet, tiny_model_dir, "--outdir-path", tmp_path / "results",
                                           "--work-dir", tmp_path / "work", "--dtype", "float32")
    assert code == 2 and stderr.startswith("ERROR: not enough disk space") and "Traceback" not in stderr, stderr
    fs = plan["filesystems"][0]
    assert plan["fits"] is False and not fs["fits"] and fs["needed_bytes"] > 50_000
    assert storage.fmt_bytes(fs["needed_bytes"]) in stderr and storage.fmt_bytes(50_000) in stderr
    assert str(tmp_path / "work") in stderr and str(tmp_path / "results") in stderr
    for option in SHRINKERS:
        assert option in stderr, (option, stderr)
    assert "DOES NOT FIT" in stdout
    assert not (out / "plan.json").exists() and not list(out.glob("units/*.csv")), "a refused run wrote a plan"


def test_ignore_space_check_runs_anyway_with_a_warning(capsys, tmp_path, samplesheet, tiny_model_dir, disk):
    disk(free=50_000)
    code, stdout, stderr, plan = preflight(capsys, tmp_path / "pf", samplesheet, tiny_model_dir, "--outdir-path",
                                           tmp_path / "results", "--work-dir", tmp_path / "work", "--ignore-space-check")
    assert code == 0, stderr
    assert stderr.startswith("WARNING: not enough disk space") and "ERROR" not in stderr
    assert plan["fits"] is False and plan["ignored"] is True and (tmp_path / "pf" / "plan.json").is_file()


def test_a_stub_run_plans_and_is_never_refused(capsys, tmp_path, samplesheet, tiny_model_dir, disk):
    disk(free=0)
    code, _, stderr, plan = preflight(capsys, tmp_path / "pf", samplesheet, tiny_model_dir, "--stub",
                                      "--outdir-path", tmp_path / "results", "--work-dir", tmp_path / "work")
    assert code == 0, stderr
    assert plan["stub"] is True and plan["fits"] is False and plan["ignored"] is True
    assert item(plan, "layer_files")["bytes"] > 0             # token counts from the tokenizer, as in a real run


def test_plan_json_does_not_depend_on_free_space(capsys, tmp_path, samplesheet, tiny_model_dir, disk):
    """plan.json decides which extraction units re-run (compared by content): free space must not change it."""
    texts = []
    for free in (10**12, 10**13):
        disk(free=free)
        code, _, stderr, plan = preflight(capsys, tmp_path / str(free), samplesheet, tiny_model_dir, "--outdir-path",
                                          tmp_path / "results", "--work-dir", tmp_path / "work")
        assert code == 0 and plan["filesystems"][0]["free_bytes"] == free, stderr
        texts.append((tmp_path / str(free) / "plan.json").read_text())
    assert texts[0] == texts[1] and "storage" not in json.loads(texts[0])


def test_hard_links_cost_nothing_on_one_file_system_and_copies_across_two(capsys, tmp_path, samplesheet,
                                                                          tiny_model_dir, disk):
    def run(devices, name):
        disk(free=10**12, devices=devices)
        code, _, stderr, plan = preflight(capsys, tmp_path / name, samplesheet, tiny_model_dir, "--samples-per-task", "0",
                                          "--outdir-path", tmp_path / "results", "--work-dir", tmp_path / "work")
        assert code == 0, stderr
        return plan

    one, two = run({"outdir": 1, "work": 1}, "one"), run({"outdir": 1, "work": 2}, "two")
    pub1, pub2 = item(one, "published"), item(two, "published")
    assert pub1["bytes"] == pub2["bytes"] == item(one, "layer_files")["bytes"]          # one shard: same files
    assert (pub1["new_bytes"], pub2["new_bytes"]) == (0, pub2["bytes"])
    assert len(one["filesystems"]) == 1 and len(two["filesystems"]) == 2
    assert {fs["needed_bytes"] for fs in two["filesystems"]} == {pub2["bytes"], item(two, "layer_files")["bytes"]}


def test_files_a_resume_reuses_are_not_counted_twice(capsys, tmp_path, samplesheet, tiny_model_dir, disk):
    """A unit file of this plan in a task folder of the work dir, with exactly its projected size, is credited;
    another size or another name is not."""
    disk(free=10**12)
    code, _, stderr, first = preflight(capsys, tmp_path / "a", samplesheet, tiny_model_dir, "--outdir-path",
                                       tmp_path / "results", "--work-dir", tmp_path / "work")
    assert code == 0, stderr
    unit = first["units"][0]
    (name, size), (other, other_size) = list(unit["files"].items())[:2]
    task = tmp_path / "work" / "ab" / "cdef0123" / unit["id"]
    task.mkdir(parents=True)
    with open(task / name, "wb") as fh:
        fh.truncate(size)
    with open(task / other, "wb") as fh:
        fh.truncate(other_size - 1)                            # a partial or different file: not credited
    (task / "layer_9_english.pt").write_bytes(b"not of this plan")
    code, _, stderr, second = preflight(capsys, tmp_path / "b", samplesheet, tiny_model_dir, "--outdir-path",
                                        tmp_path / "results", "--work-dir", tmp_path / "work")
    assert code == 0, stderr
    assert item(second, "layer_files")["present_bytes"] == size
    assert second["filesystems"][0]["needed_bytes"] == first["filesystems"][0]["needed_bytes"] - size


# ------------------------------------------------------------------ free space and quota, best effort
def test_free_space_of_a_folder_not_there_yet_is_its_nearest_existing_ancestor(tmp_path, monkeypatch):
    monkeypatch.setattr(storage.shutil, "which", lambda name: None)        # no `quota`: no quota, no failure
    free = storage.free_space(tmp_path / "not" / "yet")
    assert free.checked_at == str(tmp_path) and free.quota_free_bytes is None
    assert free.free_bytes == os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    assert free.device == os.stat(tmp_path).st_dev


def test_quota_output_is_read_for_the_right_file_system(tmp_path):
    text = ("Disk quotas for user alice (uid 1000):\n"
            "     Filesystem  blocks   quota   limit   grace   files   quota   limit   grace\n"
            "      /dev/other     500    1000    2000               1       0       0\n"
            "      /dev/mine  900000* 1000000 1100000   6days     12       0       0\n")
    dev = os.stat(tmp_path).st_dev
    got = storage.parse_quota(text, dev, {"/dev/mine": [str(tmp_path)], "/dev/other": ["/nonexistent"]})
    assert got is not None and got[0] == (1_000_000 - 900_000) * 1024 and "/dev/mine" in got[1]
    assert storage.parse_quota(text, dev, {}) is None
    assert storage.parse_quota("Disk quotas for user alice (uid 1000): none\n", dev, {}) is None
    free = storage.FreeSpace("x", "x", dev, 10**12, got[0])
    assert free.available == got[0]


def test_the_docs_sizes_are_the_projection():
    """docs/usage.md's seed-job figures are what benchmarks/storage_projection.py prints (same code as PREFLIGHT)."""
    import argparse
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "storage_projection.py"
    spec = importlib.util.spec_from_file_location("storage_projection", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = argparse.Namespace(samples=2000, layers=34, hidden=2560, languages=2, image_tokens=256, fixed=278,
                              caption_mean=20, caption_max=60)
    plan, captions = bench.seed_plan(args), bench.caption_tokens(2000, 20, 60)
    assert sum(captions) == 2000 * 20 and max(captions) == 60
    docs = (path.parents[1] / "docs" / "usage.md").read_text(encoding="utf-8")
    for layout in ("padded", "ragged"):
        figure = bench.gb(bench.project(args, plan, captions, "all", layout=layout).item("layer_files").bytes)
        assert figure in docs, (layout, figure)
