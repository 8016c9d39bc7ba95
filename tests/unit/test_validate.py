"""validate(): checks, checksums, Parquet metadata, metadata JSON, HTML report and the CLI."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from layerwise.core import schema  # noqa: E402
from layerwise.core.errors import LayerwiseError  # noqa: E402
from layerwise.publish import validate as V  # noqa: E402
from layerwise.publish.validation import stats  # noqa: E402
from tests.support import layer_file_factory as F  # noqa: E402
from tests.support.command_runner import run_in_process  # noqa: E402

REPO = F.REPO
LAYERS = [0, 2, 5]
LANGUAGES = ["english", "arabic"]
N = 9
SHARD = 4


class Run:
    """A complete, valid set of merged layer files with its plan and samplesheet."""

    def __init__(self, root: Path, layout="padded", dtype=torch.float32, nan_policy="zero"):
        self.root = root
        self.layout, self.dtype, self.nan_policy = layout, dtype, nan_policy
        self.ids = F.sample_ids(N)
        self.written = F.write_layer_set(root / "layers", LAYERS, LANGUAGES, self.ids,
                                         layout=layout, dtype=dtype, nan_policy=nan_policy)
        self.samplesheet = F.write_samplesheet(root / "samplesheet.valid.csv", self.ids, LANGUAGES)
        self.plan = F.make_plan(LAYERS, LANGUAGES, N, SHARD)
        self.out = root / "out"
        self.summaries = []
        for k, (secs, peak) in enumerate([(2.0, 1000), (3.0, 5000)]):
            p = root / f"summary_{k}.json"
            p.write_text(json.dumps({"language": "english", "layers": LAYERS, "rows": f"{5 * k}:{5 * k + 5}",
                                     "samples": 5, "samples_this_run": 5, "resumed_from_sample": 0,
                                     "positions_kept": 40, "seconds": secs, "samples_per_s": 5 / secs,
                                     "bytes_written": 1000, "nan_counts": {"0": 0},
                                     "peak_host_memory_bytes": peak, "peak_gpu_memory_bytes": None,
                                     "batch_size": 1}))
            self.summaries.append(p)

    @property
    def files(self) -> list[Path]:
        return [path for path, _ in self.written.values()]

    def path(self, layer, language) -> Path:
        return self.written[(layer, language)][0]

    def rewrite(self, layer, language, samples, **kwargs):
        opts = dict(layout=self.layout, dtype=self.dtype, nan_policy=self.nan_policy)
        opts.update(kwargs)
        F.write_layer_file(self.path(layer, language), layer, language, samples, **opts)

    def validate(self, files=None, plan=None):
        return V.validate(plan or self.plan, self.samplesheet, self.files if files is None else files,
                          self.summaries, self.out)


@pytest.fixture
def run(tmp_path):
    return Run(tmp_path)


def expected_norm_stats(samples, dtype):
    norms = torch.cat([torch.linalg.vector_norm(s.stored(dtype).double(), dim=1) for s in samples])
    return float(norms.mean()), float(norms.std(unbiased=False))


# -- success --------------------------------------------------------------------------------
@pytest.mark.parametrize("layout,dtype", [("padded", torch.float32), ("ragged", torch.bfloat16)])
def test_complete_run_passes_and_writes_metadata(tmp_path, layout, dtype):
    r = Run(tmp_path, layout=layout, dtype=dtype)
    meta = r.validate()

    # JSON
    on_disk = json.loads((r.out / "extraction_metadata.json").read_text())
    assert on_disk["status"] == meta["status"] == "passed"
    assert on_disk["layers"] == LAYERS and on_disk["languages"] == LANGUAGES and on_disk["samples"] == N
    assert on_disk["model"]["id"] == F.MODEL_ID and on_disk["model"]["revision"] == F.MODEL_REVISION
    assert on_disk["model"]["num_layers"] == F.NUM_LAYERS and on_disk["model"]["hidden_size"] == F.HIDDEN_SIZE
    assert on_disk["layout"] == layout and on_disk["dtype"] == schema.dtype_name(dtype)
    assert on_disk["token_selection"] == "all" and on_disk["nan_policy"] == "zero"
    assert on_disk["created_utc"].endswith("Z")
    assert all(c["passed"] for c in on_disk["checks"]) and len(on_disk["checks"]) == len(V.CHECKS)
    assert len(on_disk["files"]) == len(LAYERS) * len(LANGUAGES)
    for entry in on_disk["files"]:
        path = r.path(entry["layer"], entry["language"])
        assert entry["file"] == path.name
        assert entry["bytes"] == path.stat().st_size
        assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert entry["shape"] == list(torch.load(path, weights_only=True)["activations"].shape)
    assert on_disk["totals"]["bytes"] == sum(p.stat().st_size for p in r.files)
    ext = on_disk["extraction"]
    tot = ext["totals"]
    assert tot["seconds"] == 5.0 and tot["samples"] == 10 and tot["positions_kept"] == 80
    assert tot["bytes_written"] == 2000 and tot["peak_host_memory_bytes"] == 5000
    assert tot["samples_per_s"] == pytest.approx(10 / 5.0) and tot["tokens_per_s"] == pytest.approx(80 / 5.0)
    assert "batch_size" not in tot and "rows" not in tot
    assert len(ext["units"]) == 2

    # samples.parquet: one row per (sample, language)
    samples = pd.read_parquet(r.out / "metadata" / "samples.parquet")
    assert list(samples.columns) == ["sample_id", "language", "gender", "image", "image_relative", "caption",
                                     "positions_kept", "shard", "row"]
    assert len(samples) == N * len(LANGUAGES)
    sheet = pd.read_csv(r.samplesheet, dtype=str, keep_default_na=False)
    for lang in LANGUAGES:
        sub = samples[samples["language"] == lang].reset_index(drop=True)
        assert sub["sample_id"].tolist() == r.ids
        assert sub["gender"].tolist() == F.genders_for(r.ids)
        assert sub["image"].tolist() == sheet["image"].tolist()
        assert [f"{on_disk['image_root']}/{rel}" for rel in sub["image_relative"]] == sheet["image"].tolist()
        assert sub["caption"].tolist() == sheet[f"caption_{lang}"].tolist()
        known = [s.rows.shape[0] for s in r.written[(LAYERS[0], lang)][1]]
        assert sub["positions_kept"].tolist() == known
        assert sub["shard"].tolist() == [i // SHARD for i in range(N)]
        assert sub["row"].tolist() == list(range(N))

    # layers.parquet: one row per file
    table = pq.read_table(r.out / "metadata" / "layers.parquet")
    layers = table.to_pandas()
    for col in ("layer", "language", "file", "bytes", "sha256", "shape", "dtype", "nan_count",
                "nonfinite_stored", "norm_mean", "norm_std"):
        assert col in layers.columns, col
    assert len(layers) == len(LAYERS) * len(LANGUAGES)
    for row in layers.itertuples():
        path, known = r.written[(row.layer, row.language)]
        assert row.file == path.name
        assert row.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert row.bytes == path.stat().st_size
        lengths = [s.rows.shape[0] for s in known]
        shape = (N, max(lengths), F.HIDDEN_SIZE) if layout == "padded" else (sum(lengths), F.HIDDEN_SIZE)
        assert row.shape == "x".join(map(str, shape))
        assert row.dtype == schema.dtype_name(dtype)
        assert row.nan_count == 0 and row.nonfinite_stored == 0
        mean, std = expected_norm_stats(known, dtype)
        assert row.norm_mean == pytest.approx(mean, rel=1e-5)
        assert row.norm_std == pytest.approx(std, rel=1e-4)

    norms = pd.read_parquet(r.out / "metadata" / "norms_by_gender.parquet")
    path, known = r.written[(5, "arabic")]
    for gender in set(s.gender for s in known):
        got = norms[(norms.layer == 5) & (norms.language == "arabic") & (norms.gender == gender)]
        mean, _ = expected_norm_stats([s for s in known if s.gender == gender], dtype)
        assert len(got) == 1 and got["norm_mean"].iloc[0] == pytest.approx(mean, rel=1e-5)
        assert got["rows"].iloc[0] == sum(s.rows.shape[0] for s in known if s.gender == gender)

    html = (r.out / "validation_report.html").read_text()
    assert "data:image/png;base64,iVBOR" in html  # an embedded PNG (its magic number, base64)
    assert '<span class="status passed">passed</span>' in html and ">FAILED<" not in html
    assert f"All {len(V.CHECKS)} checks passed" in html
    assert "http://" not in html and "https://" not in html
    assert not [p for p in r.out.rglob("*") if ".tmp" in p.name]  # no temporary file left behind


def test_streaming_chunk_size_does_not_change_results(run, monkeypatch):
    run.validate()
    whole = pd.read_parquet(run.out / "metadata" / "layers.parquet")
    monkeypatch.setattr(stats, "CHUNK_BYTES", 1)  # one sample per chunk
    run.out = run.root / "out2"
    run.validate()
    chunked = pd.read_parquet(run.out / "metadata" / "layers.parquet")
    assert chunked["norm_mean"].tolist() == pytest.approx(whole["norm_mean"].tolist(), rel=1e-12)
    assert chunked["norm_std"].tolist() == pytest.approx(whole["norm_std"].tolist(), rel=1e-9)


def test_mean_token_selection_one_position_per_sample(tmp_path):
    ids = F.sample_ids(N)
    written = F.write_layer_set(tmp_path / "l", LAYERS, LANGUAGES, ids, token_selection="mean", layout="ragged")
    sheet = F.write_samplesheet(tmp_path / "s.csv", ids, LANGUAGES)
    meta = V.validate(F.make_plan(LAYERS, LANGUAGES, N, SHARD), sheet, [p for p, _ in written.values()], [],
                      tmp_path / "out")
    assert meta["token_selection"] == "mean"
    assert pd.read_parquet(tmp_path / "out/metadata/samples.parquet")["positions_kept"].tolist() == [1] * (2 * N)


# -- the report's figures and the summaries' totals ----------------------------------------------
GROUPS = [[0, 2], [5]]


def write_unit_summaries(root: Path, plan: dict, cache: str) -> list[Path]:
    """<root>/<unit id>/summary.json for every unit of `plan`, as extraction writes them (contract.UnitSummary).

    cache "shared": the first unit of each shard computes the shard's image features, the others reuse them;
    "none": every unit encodes its images in its own forward pass; "earlier": all reuse an earlier run's entries.
    """
    from layerwise.core.contract import ImageFeaturesSummary, UnitSummary

    paths, filled = [], set()
    for u in plan["units"]:
        start, end = (int(x) for x in u["rows"].split(":"))
        n = end - start
        features, vision = None, 0
        if cache == "none":
            vision = n
        else:
            hit = cache == "earlier" or u["shard"] in filled
            filled.add(u["shard"])
            features = ImageFeaturesSummary(cache_file=f"/cache/{u['shard']}.pt", images=n,
                                            vision_tower_images=0 if hit else n, bytes_written=0 if hit else 100,
                                            cache_hit=hit, seconds=0.0 if hit else 0.5).to_dict()
            vision = features["vision_tower_images"]
        summary = UnitSummary(
            language=u["language"], layers=u["layers"], rows=None, samples=n, samples_this_run=n,
            resumed_from_sample=0, positions_kept=10 * n, seconds=1.0, samples_per_s=float(n), bytes_written=1000,
            files=[], nan_counts={}, peak_host_memory_bytes=1 << 20, peak_gpu_memory_bytes=None,
            vision_tower_images=vision, device="cpu", dtype="float32", batch_size=1, token_selection="all",
            layout="padded", model_id=F.MODEL_ID, unit_fingerprint="f", image_features=features)
        folder = root / "units" / u["id"]
        folder.mkdir(parents=True)
        (folder / "summary.json").write_text(json.dumps(summary.to_dict()))
        paths.append(folder / "summary.json")
    return paths


def report_figures(html: str) -> dict[str, int]:
    import re

    return {k: int(v) for k, v in re.findall(r'id="([a-z-]+)">([0-9]+)<', html)}


@pytest.mark.parametrize("cache", ["shared", "none", "earlier"])
def test_report_counts_distinct_samples_rows_written_and_image_features(run, cache):
    plan = F.make_plan(LAYERS, LANGUAGES, N, SHARD, layer_groups=GROUPS)
    run.summaries = write_unit_summaries(run.root, plan, cache)
    units = len(GROUPS) * len(LANGUAGES) * 3          # 3 shards of 9 samples
    shards = 3
    meta = run.validate(plan=plan)
    html = (run.out / "validation_report.html").read_text()
    got = report_figures(html)

    assert meta["samples"] == N == got["distinct-samples"] == got["distinct-images"]
    assert f"<dd>{N} distinct samples" in html
    # every sample is written by one unit per language and layer group: a sum over units, said as such
    rows = N * len(LANGUAGES) * len(GROUPS)
    assert meta["extraction"]["totals"]["samples"] == rows == got["rows-written"] == got["rows-this-run"]
    assert f"{N} samples x {len(LANGUAGES)} language(s) x {len(GROUPS)} layer group(s)" in html
    assert "<th>samples</th>" not in html                 # no bare "samples 36" next to "9 samples"
    assert [u["unit"] for u in meta["extraction"]["units"]] == [u["id"] for u in plan["units"]]
    assert html.count("<tr><td>L") == units                # one row per unit, named by its id
    # image features: computed once per image, reused by the other units, or encoded by every unit
    computed = {"shared": N, "none": 0, "earlier": 0}[cache]
    reused = {"shared": rows - N, "none": 0, "earlier": rows}[cache]
    in_forward = rows if cache == "none" else 0
    assert (got["images-computed"], got["images-reused"], got["images-in-forward"]) == (computed, reused, in_forward)
    assert meta["vision_tower"]["images_encoded"] == got["images-encoded"] == computed + in_forward
    encoding = meta["image_encoding"]
    assert len(encoding["units"]) == (0 if cache == "none" else units)
    if cache == "shared":
        assert f"by {shards} unit(s) in 1.5 s" in html
        assert encoding["totals"]["vision_tower_images"] == N and encoding["totals"]["images"] == rows
        assert html.count("computed into the cache (") == shards
        assert html.count("reused from the cache (") == units - shards
    if cache == "none":
        assert f"by {units} unit(s) without the shared cache" in html
        assert html.count("encoded in the extraction pass (") == units


def test_summary_totals_use_the_declared_keys_only():
    from layerwise.core.contract import UnitSummary, peak_keys, summed_keys
    from layerwise.publish.validation.summaries import extraction_totals, image_features_totals

    assert summed_keys(UnitSummary) == ("samples", "samples_this_run", "positions_kept", "seconds", "bytes_written",
                                        "vision_tower_images")
    assert peak_keys(UnitSummary) == ("peak_host_memory_bytes", "peak_gpu_memory_bytes")
    units = [{"samples": 4, "samples_this_run": 2, "resumed_from_sample": 2, "positions_kept": 40, "seconds": 2.0,
              "batch_size": 8, "peak_host_memory_bytes": 5, "peak_gpu_memory_bytes": None, "max_new_count": 7,
              "samples_skipped": 1, "throughput_images": 9, "samples_per_s": 99.0, "cache_hit": True},
             {"samples": 6, "samples_this_run": 6, "resumed_from_sample": 0, "positions_kept": 60, "seconds": 3.0,
              "batch_size": 8, "peak_host_memory_bytes": 3, "peak_gpu_memory_bytes": 11}]
    totals = extraction_totals(units)
    # names that merely contain "samples", "count", "images" or "max" are not totalled; rates are recomputed
    assert totals == {"units": 2, "samples": 10, "samples_this_run": 8, "positions_kept": 100, "seconds": 5.0,
                      "peak_host_memory_bytes": 5, "peak_gpu_memory_bytes": 11,
                      "samples_per_s": pytest.approx(8 / 5.0), "tokens_per_s": pytest.approx(100 / 5.0)}
    assert image_features_totals([{"images": 3, "vision_tower_images": 3, "bytes_written": 9, "seconds": 0.5,
                                   "cache_hit": False},
                                  {"images": 3, "vision_tower_images": 0, "bytes_written": 0, "seconds": 0.0,
                                   "cache_hit": True}]) == {
        "units": 2, "images": 6, "vision_tower_images": 3, "bytes_written": 9, "seconds": 0.5}


def test_metadata_records_the_format_version(run):
    from layerwise.core.contract import FORMAT_VERSION

    meta = run.validate()
    assert meta["format_version"] == FORMAT_VERSION
    assert json.loads((run.out / "extraction_metadata.json").read_text())["format_version"] == FORMAT_VERSION


# -- failures -------------------------------------------------------------------------------
def assert_fails(run, *fragments, files=None, plan=None):
    with pytest.raises(LayerwiseError) as err:
        run.validate(files=files, plan=plan)
    message = str(err.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in:\n{message}"
    html = (run.out / "validation_report.html").read_text()
    assert '<span class="status FAILED">FAILED</span>' in html
    assert not (run.out / "extraction_metadata.json").exists()
    assert not (run.out / "metadata" / "layers.parquet").exists()
    return message


def test_missing_layer_file(run):
    files = [p for p in run.files if p.name != "layer_2_arabic.pt"]
    msg = assert_fails(run, "missing 1 of 6 layer files: layer_2_arabic.pt", files=files)
    assert "layer_2_arabic.pt" in (run.out / "validation_report.html").read_text()
    assert msg.count("\n  - ") == 1  # the other files are fine


def test_unexpected_extra_file(run):
    extra = F.write_layer_file(run.root / "extra" / "layer_3_english.pt", 3, "english",
                               F.make_samples(3, "english", run.ids))
    assert_fails(run, "unexpected", "layer_3_english.pt", files=run.files + [extra])


def test_sample_id_misaligned_across_languages(run):
    ids = run.ids[:]
    ids[3], ids[4] = ids[4], ids[3]
    run.rewrite(2, "arabic", F.make_samples(2, "arabic", ids))
    msg = assert_fails(run, "layer_2_arabic.pt", "sample_ids", ids[3])
    assert "layer_2_english.pt" not in msg


def test_lengths_differ_across_layers(run):
    samples = F.make_samples(5, "english", run.ids)
    samples[2].truncate(1)
    run.rewrite(5, "english", samples)
    assert_fails(run, "layer_5_english.pt", "lengths differ from layer_0_english.pt", run.ids[2])


def test_hidden_size_differs_from_plan(run):
    plan = json.loads(json.dumps(run.plan))
    plan["model"]["hidden_size"] = 32
    assert_fails(run, "hidden_size", "plan hidden size 32", "layer_0_english.pt", "layer_5_arabic.pt", plan=plan)


def test_one_file_with_other_hidden_size(run):
    run.rewrite(0, "arabic", F.make_samples(0, "arabic", run.ids, hidden_size=8))
    msg = assert_fails(run, "layer_0_arabic.pt", "hidden_size")
    assert "layer_2_arabic.pt" not in msg


def _with_nan(run, layer, language):
    samples = F.make_samples(layer, language, run.ids)
    samples[1].rows[0, 3] = float("nan")
    samples[4].rows[1, 0] = float("inf")
    samples[1].nan_count = 1
    samples[4].nan_count = 1
    return samples


def test_nan_stored_with_policy_zero(run):
    run.rewrite(2, "english", _with_nan(run, 2, "english"))
    msg = assert_fails(run, "layer_2_english.pt", "2 NaN/Inf", "'zero'")
    assert "[finite]" in msg


def test_nan_stored_with_policy_keep_passes_and_is_reported(tmp_path):
    r = Run(tmp_path, nan_policy="keep", layout="ragged")
    samples = _with_nan(r, 2, "english")
    r.rewrite(2, "english", samples)
    r.validate()
    layers = pd.read_parquet(r.out / "metadata" / "layers.parquet").set_index("file")
    assert layers.loc["layer_2_english.pt", "nonfinite_stored"] == 2
    assert layers.loc["layer_2_english.pt", "nan_count"] == 2
    assert layers.loc["layer_0_english.pt", "nonfinite_stored"] == 0
    finite_rows = [s.rows[torch.isfinite(s.rows).all(dim=1)] for s in samples]
    norms = torch.cat([torch.linalg.vector_norm(x.double(), dim=1) for x in finite_rows])
    assert layers.loc["layer_2_english.pt", "norm_mean"] == pytest.approx(float(norms.mean()), rel=1e-5)
    assert not math.isnan(layers.loc["layer_2_english.pt", "norm_std"])


def test_truncated_file(run):
    path = run.path(5, "english")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert_fails(run, "layer_5_english.pt", "cannot be loaded", "truncated or corrupt")


def test_corrupt_file(run):
    path = run.path(0, "arabic")
    path.write_bytes(b"\x00garbage" * 100)
    assert_fails(run, "layer_0_arabic.pt", "cannot be loaded")


@pytest.mark.parametrize("key", ["nan_policy", "token_kinds"])
def test_file_missing_a_key(run, key):
    path = run.path(2, "english")
    data = torch.load(path, weights_only=True)
    del data[key]
    torch.save(data, path)
    assert_fails(run, "layer_2_english.pt", f"lacks keys ['{key}']")


def test_every_file_holds_the_token_kinds_it_was_written_with(run):
    run.validate()
    for (_layer, _language), (path, samples) in run.written.items():
        d = torch.load(path, weights_only=True, mmap=True)
        assert d["token_kinds"].dtype == torch.int8 and d["token_kinds"].shape == d["token_ids"].shape
        for i, s in enumerate(samples):
            assert torch.equal(d["token_kinds"][i, :s.length], s.token_kinds)
            assert bool((d["token_kinds"][i, s.length:] == schema.TOKEN_KINDS["pad"]).all())


def _edit_token_kinds(run, case):
    path = run.path(2, "english")
    d = torch.load(path, weights_only=True)
    if case == "shape":
        d["token_kinds"] = d["token_kinds"][:, :1].contiguous()
    elif case == "padding":
        n = int(d["lengths"][0])
        assert n < d["token_kinds"].shape[1]
        d["token_kinds"][0, n:] = schema.TOKEN_KINDS["caption"]
    else:  # differs from the other layers of the language
        d["token_kinds"][0, 0] = schema.TOKEN_KINDS["prompt"]
    torch.save(d, path)


@pytest.mark.parametrize("case", ["shape", "padding", "across_layers"])
def test_bad_token_kinds_are_reported(run, case):
    _edit_token_kinds(run, case)
    assert_fails(run, "layer_2_english.pt", "token_kinds")


# -- checksums against what the writers recorded ----------------------------------------------
def test_checksum_mismatch_is_reported_under_checksums_naming_the_file(run):
    expected = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in run.files}
    # the recorded checksums pass
    meta = V.validate(run.plan, run.samplesheet, run.files, run.summaries, run.out, expected_sha256=expected)
    assert next(c for c in meta["checks"] if c["name"] == "checksums")["passed"]
    # a file changed after its writer recorded its sha256, with contents that are still valid
    run.rewrite(2, "arabic", F.make_samples(4, "arabic", run.ids))
    (run.out / "extraction_metadata.json").unlink()
    for sub in ("samples", "layers", "norms_by_gender"):
        (run.out / "metadata" / f"{sub}.parquet").unlink()
    with pytest.raises(LayerwiseError) as err:
        V.validate(run.plan, run.samplesheet, run.files, run.summaries, run.out, expected_sha256=expected)
    msg = str(err.value)
    assert msg.startswith("validation failed with 1 problem(s):")
    line = next(ln for ln in msg.splitlines() if "[checksums]" in ln)
    assert "layer_2_arabic.pt" in line and expected["layer_2_arabic.pt"][:12] in line
    assert "layer_2_english.pt" not in msg
    html = (run.out / "validation_report.html").read_text()
    assert '<span class="status FAILED">FAILED</span>' in html and "layer_2_arabic.pt" in html
    assert not (run.out / "extraction_metadata.json").exists()
    # files without a recorded checksum are not checked (e.g. a file of a unit that recorded none)
    V.validate(run.plan, run.samplesheet, run.files, run.summaries, run.out,
               expected_sha256={k: v for k, v in expected.items() if k != "layer_2_arabic.pt"})


def test_write_json_false_writes_no_metadata_json(run):
    meta = V.validate(run.plan, run.samplesheet, run.files, run.summaries, run.out, write_json=False)
    assert meta["status"] == "passed" and len(meta["files"]) == 6
    assert not (run.out / "extraction_metadata.json").exists()
    for rel in (V.SAMPLES_PARQUET, V.LAYERS_PARQUET, V.NORMS_PARQUET, V.REPORT_HTML):
        assert (run.out / rel).is_file(), rel


def test_layer_key_does_not_match_name(run):
    F.write_layer_file(run.path(2, "english"), 3, "english", F.make_samples(2, "english", run.ids))
    assert_fails(run, "layer_2_english.pt", "holds layer 3")


def test_fewer_samples_than_samplesheet(run):
    run.rewrite(0, "english", F.make_samples(0, "english", run.ids[:-1]))
    assert_fails(run, "layer_0_english.pt", f"holds {N - 1} samples, the samplesheet has {N}")


def test_all_problems_are_collected(run):
    run.rewrite(2, "english", _with_nan(run, 2, "english"))
    run.path(5, "arabic").write_bytes(b"not a torch file")
    files = [p for p in run.files if p.name != "layer_0_arabic.pt"]
    msg = assert_fails(run, "layer_2_english.pt", "layer_5_arabic.pt", "layer_0_arabic.pt", files=files)
    assert msg.startswith("validation failed with 3 problem(s):")


# -- CLI ------------------------------------------------------------------------------------
def run_cli(r: Run, files, summaries=(), summaries_first=True, capsys=None) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `layerwise-validate ARGS`, run as bin/ runs it (layerwise.core.cli.run_cli)."""
    plan = r.root / "plan.json"
    plan.write_text(json.dumps(r.plan))
    args = ["--plan", plan, "--samplesheet", r.samplesheet, "--out-dir", r.out]
    sums = ["--summaries", *summaries] if summaries else []
    args += [*sums, *files] if summaries_first else [*files, *sums]
    return run_in_process("layerwise-validate", args, capsys)


def test_cli_success_and_failure(run, capsys):
    assert (REPO / "bin" / "layerwise-validate").stat().st_mode & 0o111
    # `--summaries a.json b.json x.pt ...`: the summaries' argument swallows the layer files; the script separates them
    code, out, err = run_cli(run, run.files, run.summaries, capsys=capsys)
    assert code == 0, err
    assert "validation passed: 6 layer files" in out and f"{N} samples" in out
    assert f"{len(V.CHECKS)}/{len(V.CHECKS)} checks passed" in out
    units = json.loads((run.out / "extraction_metadata.json").read_text())["extraction"]["units"]
    assert [u["summary_file"] for u in units] == [p.name for p in run.summaries]

    (run.out / "extraction_metadata.json").unlink()
    code, out, err = run_cli(run, run.files, run.summaries, summaries_first=False, capsys=capsys)
    assert code == 0, err
    units = json.loads((run.out / "extraction_metadata.json").read_text())["extraction"]["units"]
    assert [u["summary_file"] for u in units] == [p.name for p in run.summaries]

    (run.out / "extraction_metadata.json").unlink()
    code, out, err = run_cli(run, [p for p in run.files if p.name != "layer_5_english.pt"], capsys=capsys)
    assert code == 2
    assert err.startswith("ERROR: validation failed") and "layer_5_english.pt" in err
    assert "Traceback" not in err
    assert not (run.out / "extraction_metadata.json").exists()


def test_row_norms_counts_nonfinite_values_and_survives_float32_overflow():
    rows = torch.tensor([[3.0, 4.0, 0.0],
                         [float("nan"), 1.0, float("inf")],
                         [3e30, 4e30, 0.0],       # finite, but its square overflows float32
                         [0.0, -float("inf"), 2.0]], dtype=torch.float32)
    norms, ok, nonfinite = stats.row_norms(rows)
    assert nonfinite == 3
    assert ok.tolist() == [True, False, True, False]
    assert norms[0] == pytest.approx(5.0) and norms[2] == pytest.approx(5e30, rel=1e-6)
