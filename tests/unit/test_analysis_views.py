"""Views and the chunked reader: pooled vectors against a direct computation from the file."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from layerwise.analysis.pooling import pool_file
from layerwise.analysis.reader import samples_per_chunk
from layerwise.analysis.views import EVERY_ROW, SKIP_FIRST, plan_views
from layerwise.core import schema
from layerwise.layerfile.reader import layer_file_from_dict, open_layer_file
from tests.support.analysis_synthetic import SyntheticSpec, write_synthetic_run

K = schema.TOKEN_KINDS
# The view definitions, written out independently of the code under test.
EXPECTED_KINDS = {"image": {K["image"]}, "prompt": {K["prompt"]}, "caption": {K["caption"]},
                  "all": {K["image"], K["prompt"], K["caption"], K["template"]}}


def _direct_means(path, view):
    """Per-sample mean over the view's positions, from a plain (non-mmap) torch.load."""
    d = torch.load(path, weights_only=True)
    out = []
    for i in range(len(d["sample_ids"])):
        n = int(d["lengths"][i])
        if d["layout"] == "padded":
            rows, kinds = d["activations"][i, :n], d["token_kinds"][i, :n]
        else:
            a = int(d["offsets"][i])
            rows, kinds = d["activations"][a:a + n], d["token_kinds"][a:a + n]
        keep = torch.tensor([int(k) in EXPECTED_KINDS[view] for k in kinds])
        out.append(rows[keep].double().mean(0).numpy() if keep.any() else np.full(rows.shape[1], np.nan))
    return np.stack(out)


@pytest.mark.parametrize("layout,dtype", [("padded", torch.bfloat16), ("ragged", torch.float32),
                                          ("padded", torch.float32), ("ragged", torch.bfloat16)])
def test_pooled_views_match_direct_means(tmp_path, layout, dtype):
    run = write_synthetic_run(tmp_path, SyntheticSpec(n_samples=9, hidden=8, layers=(0,), languages=("english",),
                                                      layout=layout, dtype=dtype, prompt_len=(0, 2)))
    lf = open_layer_file(run.paths[0])
    plan, notes = plan_views(lf.token_selection, True)
    assert notes == [] and set(plan) == {"image", "prompt", "caption", "all"}
    pooled = pool_file(lf, plan, chunk_bytes=3 * 40 * 8 * 4)   # several chunks
    for view in plan:
        want = _direct_means(run.paths[0], view)
        got = pooled[view].vectors
        np.testing.assert_array_equal(np.isnan(got[:, 0]), np.isnan(want[:, 0]))
        ok = ~np.isnan(want[:, 0])
        np.testing.assert_allclose(got[ok], want[ok], rtol=1e-5, atol=1e-5)
    # samples drawn with no prompt token are left out of the prompt view, and only of it
    no_prompt = ~pooled["prompt"].valid
    assert no_prompt.any() and pooled["prompt"].counts[no_prompt].sum() == 0
    assert pooled["all"].valid.all() and pooled["image"].valid.all()


def test_padded_and_ragged_pool_identically(tmp_path):
    spec = dict(n_samples=7, hidden=8, layers=(0,), languages=("arabic",), dtype=torch.float32)
    a = write_synthetic_run(tmp_path / "p", SyntheticSpec(layout="padded", **spec))
    b = write_synthetic_run(tmp_path / "r", SyntheticSpec(layout="ragged", **spec))
    pa, pb = (pool_file(lf, plan_views(lf.token_selection, True)[0]) for lf in map(open_layer_file, (a.paths[0], b.paths[0])))
    for view in pa:
        np.testing.assert_array_equal(pa[view].vectors, pb[view].vectors)


@pytest.mark.parametrize("layout", ["padded", "ragged"])
def test_views_exclude_a_huge_norm_bos(tmp_path, layout):
    spec = dict(n_samples=6, hidden=8, layers=(0,), languages=("english",), layout=layout, dtype=torch.float32)
    plain = write_synthetic_run(tmp_path / "plain", SyntheticSpec(**spec))
    huge = write_synthetic_run(tmp_path / "huge", SyntheticSpec(bos_value=1e6, **spec))
    lf_p, lf_h = open_layer_file(plain.paths[0]), open_layer_file(huge.paths[0])
    raw = torch.load(huge.paths[0], weights_only=True)["activations"]
    assert float(raw.abs().max()) == 1e6                      # the BOS really is in the file
    pp = pool_file(lf_p, plan_views("all", True)[0])
    ph = pool_file(lf_h, plan_views("all", True)[0])
    for view in ("image", "prompt", "caption", "all"):
        np.testing.assert_array_equal(pp[view].vectors, ph[view].vectors)
        assert np.nanmax(np.abs(ph[view].vectors)) < 100


class RecordingTensor:
    """Wraps a tensor and records every slice the reader requests."""

    def __init__(self, t):
        self.t, self.requests = t, []
        self.shape, self.dtype = t.shape, t.dtype

    def __getitem__(self, key):
        assert isinstance(key, slice), f"reader indexed the activations with {key!r}"
        start, stop, _ = key.indices(self.t.shape[0])
        self.requests.append((start, stop))
        return self.t[key]

    def dim(self):
        return self.t.dim()


@pytest.mark.parametrize("layout", ["padded", "ragged"])
def test_reader_requests_one_chunk_of_rows_at_a_time(tmp_path, layout):
    run = write_synthetic_run(tmp_path, SyntheticSpec(n_samples=23, hidden=8, layers=(0,), languages=("english",),
                                                      layout=layout))
    data = dict(torch.load(run.paths[0], weights_only=True, mmap=True))
    rec = RecordingTensor(data["activations"])
    data["activations"] = rec
    lf = layer_file_from_dict(data)
    chunk_bytes = 4 * 40 * 8 * 4
    per_chunk = samples_per_chunk(lf, chunk_bytes)
    assert 1 < per_chunk < 23
    got = pool_file(lf, plan_views("all", True)[0], chunk_bytes)
    widest = int(lf.lengths.max())
    for start, stop in rec.requests:
        if layout == "padded":
            assert stop - start <= per_chunk                         # samples per request
        else:
            assert stop - start <= per_chunk * widest                # rows per request
    covered = sum(b - a for a, b in rec.requests)
    assert covered == (23 if layout == "padded" else int(lf.lengths.sum()))
    want = pool_file(open_layer_file(run.paths[0]), plan_views("all", True)[0])
    for view in want:
        np.testing.assert_array_equal(got[view].vectors, want[view].vectors)


def test_selections_skip_views_they_do_not_contain_with_a_note():
    plan, notes = plan_views("text", True)
    assert set(plan) == {"prompt", "caption"}
    assert len(notes) == 2 and all("skipped" in n for n in notes)
    assert any("'image'" in n for n in notes) and any("'all'" in n for n in notes)
    plan, notes = plan_views("caption", True)
    assert set(plan) == {"caption"} and len(notes) == 3
    plan, notes = plan_views("mean", True)
    assert plan == {"caption": EVERY_ROW} and len(notes) == 3
    plan, notes = plan_views("last", True)
    assert plan == {} and any("'last'" in n for n in notes)
    plan, _ = plan_views("last", True, ("last",))
    assert plan == {"last": EVERY_ROW}
    plan, notes = plan_views("all", False)
    assert plan == {"all": SKIP_FIRST} and len(notes) == 3 and all("token_kinds" in n for n in notes)


@pytest.mark.parametrize("selection", ["text", "caption", "mean", "last"])
def test_selection_files_pool_what_they_store(tmp_path, selection):
    run = write_synthetic_run(tmp_path, SyntheticSpec(n_samples=5, hidden=8, layers=(0,), languages=("english",),
                                                      token_selection=selection, bos_value=1e6))
    lf = open_layer_file(run.paths[0])
    plan, _ = plan_views(lf.token_selection, True, ("image", "prompt", "caption", "all", "last"))
    pooled = pool_file(lf, plan)
    if selection in ("mean", "last"):
        view = "caption" if selection == "mean" else "last"
        assert set(pooled) == {view}
        d = torch.load(run.paths[0], weights_only=True)
        np.testing.assert_allclose(pooled[view].vectors, d["activations"].reshape(5, -1).numpy(), rtol=1e-6)
    else:
        for view, p in pooled.items():
            np.testing.assert_allclose(p.vectors, _direct_means(run.paths[0], view), rtol=1e-5, atol=1e-5)
            assert np.abs(p.vectors).max() < 100                     # no BOS in any view


def test_all_view_without_token_kinds_drops_the_first_position(tmp_path):
    run = write_synthetic_run(tmp_path, SyntheticSpec(n_samples=4, hidden=8, layers=(0,), languages=("english",),
                                                      bos_value=1e6))
    d = dict(torch.load(run.paths[0], weights_only=True))
    with_kinds = pool_file(layer_file_from_dict(d), plan_views("all", True)[0])
    kinds = d.pop("token_kinds")
    lf = layer_file_from_dict(d)
    plan, _ = plan_views(lf.token_selection, lf.token_kinds is not None)
    pooled = pool_file(lf, plan)
    assert set(pooled) == {"all"}
    # without kinds `all` also keeps the template positions it cannot tell apart: here it equals the
    # kinds-based `all` since every non-BOS position is image/prompt/caption/template
    assert int((kinds == K["bos"]).sum()) == 4
    np.testing.assert_allclose(pooled["all"].vectors, with_kinds["all"].vectors, rtol=1e-6)


def test_a_nan_row_voids_only_the_views_that_contain_it(tmp_path):
    run = write_synthetic_run(tmp_path, SyntheticSpec(n_samples=5, hidden=8, layers=(0,), languages=("english",)))
    d = dict(torch.load(run.paths[0], weights_only=True))
    caption_pos = int((d["token_kinds"][2] == K["caption"]).nonzero()[0])
    d["activations"] = d["activations"].clone()
    d["activations"][2, caption_pos, 3] = float("nan")
    torch.save(d, run.paths[0])
    pooled = pool_file(open_layer_file(run.paths[0]), plan_views("all", True)[0])
    assert not pooled["caption"].valid[2] and not pooled["all"].valid[2]
    assert pooled["image"].valid.all() and pooled["prompt"].valid.all()
    assert pooled["caption"].valid.sum() == 4
    for view in ("image", "prompt"):
        np.testing.assert_allclose(pooled[view].vectors, _direct_means(run.paths[0], view), rtol=1e-5, atol=1e-5)
