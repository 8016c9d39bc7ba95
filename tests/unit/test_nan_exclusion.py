"""Samples with NaN/Inf values at extraction (`nan_counts > 0`) are not data: no SAE and no analysis uses them.

Layer files are written with the real writer (tests/support/layer_file_factory.py), with some samples as
`--nan_policy zero` stores them (rows of zeros) or as `keep` stores them (NaN/Inf among the rows), and their
`nan_counts`. Expected counts come from the FakeSamples and the documented split rule, not from the code
under test; rows are identity-coded (sample, language, position), so every yielded row names its origin.
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter

import numpy as np
import pytest
import torch

from layerwise.core import schema
from layerwise.core.errors import LayerwiseError
from layerwise.layerfile.reader import open_layer_file
from layerwise.sae.options import SAEOptions
from layerwise.sae.provider import ActivationProvider
from layerwise.sae.source import LayerSource
from tests.support import layer_file_factory as F

pytestmark = pytest.mark.usefixtures("quiet_offline_trainer")

LANGS = ("english", "arabic")
LAYER, N, H, VAL = 2, 40, F.HIDDEN_SIZE, 0.25
# samples (by index) with NaN/Inf values at extraction, per language: some train, some validation
BAD = {"english": {2, 3, 10, 25, 33}, "arabic": {3, 7, 31}}
KIND = schema.TOKEN_KINDS
TRAIN_OPTS = dict(d_sae=32, k=4, batch_size=32, epochs=20, lr=3e-3, device="cpu", validation_fraction=VAL,
                  norm_estimate_batches=2, prefetch_batches=0, chunk_tokens=64, buffer_tokens=256)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matrices: one torch thread is faster, above all on a shared machine (as test_sae_train.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def documented_validation(sample_id: str, fraction: float = VAL, seed: int = 0) -> bool:
    """docs/sae.md's split rule, computed here."""
    digest = hashlib.sha256(b"layerwise-sae-split-v1\0" + str(seed).encode() + b"\0" + sample_id.encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64 < fraction


def identity_rows(i: int, lang: int, length: int) -> torch.Tensor:
    rows = torch.randn(length, H, generator=torch.Generator().manual_seed(1000 * lang + i))
    rows[:, 0] = i + 1                  # never 0: an all-zero row can only be a zeroed (excluded) sample
    rows[:, 1] = lang + 1
    rows[:, 2] = torch.arange(length)
    return rows


def spoil(sample: F.FakeSample, policy: str) -> None:
    """The sample as extraction stores it after seeing NaN/Inf values in it."""
    if policy == "zero":
        sample.rows = torch.zeros_like(sample.rows)
    else:                               # keep: the values as they were
        sample.rows = sample.rows.clone()
        sample.rows[-1, 3:5] = float("nan")
        sample.rows[0, 5] = float("inf")
    sample.nan_count = 3


def write_set(folder, policy: str, *, layer: int = LAYER, n: int = N, bad=BAD, layout: str = "padded",
              identity: bool = True, record: bool = True) -> dict[str, tuple]:
    """{language: (path, samples)}: one file per language; `record=False` stores the spoiled rows with
    nan_counts 0 (NaN values nobody counted)."""
    ids = F.sample_ids(n)
    out = {}
    for li, lang in enumerate(LANGS):
        samples = F.make_samples(layer, lang, ids)
        for i, s in enumerate(samples):
            if identity:
                s.rows = identity_rows(i, li, s.length)
            if i in bad[lang]:
                spoil(s, policy)
                if not record:
                    s.nan_count = 0
        path = F.write_layer_file(folder / schema.layer_filename(layer, lang), layer, lang, samples, layout=layout,
                                  nan_policy=policy)
        out[lang] = (path, samples)
    return out


def expected_excluded(samples_by_lang, split: str) -> dict[str, int]:
    want_val = split == "validation"
    return {lang: sum(1 for s in samples if s.nan_count and documented_validation(s.sample_id) == want_val)
            for lang, samples in samples_by_lang.items()}


# -- the reader ----------------------------------------------------------------------------------------------
def test_reader_exposes_nan_counts_and_checks_their_shape(tmp_path):
    files = write_set(tmp_path, "zero")
    path, samples = files["english"]
    lf = open_layer_file(path)
    assert lf.nan_counts.tolist() == [s.nan_count for s in samples] and lf.nan_counts.dtype == torch.int64
    assert lf.excluded.tolist() == [i in BAD["english"] for i in range(N)] and lf.n_excluded == len(BAD["english"])
    assert lf.nan_policy == "zero"

    data = torch.load(path, weights_only=True)
    del data["nan_counts"]
    torch.save(data, tmp_path / "old.pt")           # an older file without the key: nothing was counted
    old = open_layer_file(tmp_path / "old.pt")
    assert old.nan_counts.tolist() == [0] * N and old.n_excluded == 0

    data["nan_counts"] = torch.zeros(N - 1, dtype=torch.int64)
    torch.save(data, tmp_path / "bad.pt")
    with pytest.raises(LayerwiseError, match=r"nan_counts has shape \[39\], expected \[40\]"):
        open_layer_file(tmp_path / "bad.pt")


# -- the SAE data path ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["padded", "ragged"])
@pytest.mark.parametrize("policy", ["zero", "keep"])
def test_provider_yields_no_row_of_an_excluded_sample(tmp_path, policy, layout):
    files = write_set(tmp_path, policy, layout=layout)
    sources = [LayerSource.open(files[lang][0]) for lang in LANGS]
    opts = SAEOptions(keep_kinds="all", drop_kinds="none", validation_fraction=VAL, batch_size=16,
                      chunk_tokens=40, buffer_tokens=64)
    for split in ("train", "validation"):
        p = ActivationProvider.for_split(sources, opts, split, shuffle=False, epochs=1, drop_last=False)
        x = torch.cat(list(p))
        assert bool(torch.isfinite(x).all()), "a kept NaN/Inf row was yielded"
        assert not bool((x == 0).all(dim=1).any()), "a zeroed row was yielded"
        got = Counter((int(r[1]) - 1, int(r[0]) - 1, int(r[2])) for r in x)
        want = Counter((li, i, pos) for li, lang in enumerate(LANGS) for i, s in enumerate(files[lang][1])
                       if documented_validation(s.sample_id) == (split == "validation") and not s.nan_count
                       for pos in range(s.length))
        assert got == want
        assert p.excluded == expected_excluded({lang: files[lang][1] for lang in LANGS}, split)
        assert sum(p.excluded.values()) > 0        # the fixture has excluded samples on both sides


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One pooled SAE per policy on files with excluded samples (SAELens imported once)."""
    from layerwise.sae.train import train_layer_sae

    out = {}
    for policy in ("zero", "keep"):
        root = tmp_path_factory.mktemp(f"nan_{policy}")
        files = write_set(root / "data", policy)
        records = train_layer_sae([files[lang][0] for lang in LANGS], root / "sae", SAEOptions(**TRAIN_OPTS))
        out[policy] = {"files": files, "records": {r["split"]: r for r in records},
                       "folder": root / "sae" / records[0]["sae_dir"]}
    return out


@pytest.mark.parametrize("policy", ["zero", "keep"])
def test_training_leaves_them_out_and_records_it(trained, policy):
    from sae_lens import SAE

    run = trained[policy]
    samples = {lang: run["files"][lang][1] for lang in LANGS}
    training = json.loads((run["folder"] / "training.json").read_text())
    for split in ("train", "validation"):
        want = expected_excluded(samples, split)
        assert training["excluded_samples"][split] == want
        assert run["records"][split]["excluded_samples"] == want
        assert sorted(training["excluded_sample_ids"][split]["english"]) == sorted(
            s.sample_id for s in samples["english"] if s.nan_count and documented_validation(s.sample_id) == (split == "validation"))
        # distinct samples with at least one usable file in the split; rows without bos
        used = {s.sample_id for lang in LANGS for s in samples[lang]
                if documented_validation(s.sample_id) == (split == "validation") and not s.nan_count}
        assert run["records"][split]["samples"] == len(used)
        rows = sum(int((s.token_kinds != KIND["bos"]).sum()) for lang in LANGS for s in samples[lang]
                   if documented_validation(s.sample_id) == (split == "validation") and not s.nan_count)
        assert run["records"][split]["tokens"] == rows
    assert training["train_rows"] == run["records"]["train"]["tokens"]
    assert training["nan_policies"] == {lang: policy for lang in LANGS}
    note = [n for n in training["notes"] if "nan_counts > 0" in n]
    assert len(note) == 1 and f"--nan_policy {policy}" in note[0]
    assert run["records"]["validation"]["notes"] == training["notes"]
    split = json.loads((run["folder"] / "split.json").read_text())
    assert split["excluded_nonfinite"]["validation"]["english"] == training["excluded_sample_ids"]["validation"]["english"]
    # a complete, finite SAE (with `keep`, training on the NaN rows used to publish NaN weights)
    sae = SAE.load_from_disk(run["folder"])
    assert all(bool(torch.isfinite(t).all()) for t in sae.state_dict().values())
    for r in run["records"].values():
        assert all(np.isfinite(r[k]) for k in ("explained_variance", "fvu", "mse", "mean_l0", "dead_fraction"))


def test_the_sae_report_shows_the_note(trained, tmp_path):
    from layerwise.sae.report import write_report

    html = write_report(list(trained["zero"]["records"].values()), tmp_path / "report.html").read_text()
    assert 'id="notes"' in html and "nan_counts &gt; 0" in html


@pytest.mark.parametrize("policy", ["zero", "keep"])
def test_a_layer_with_no_usable_sample_fails_naming_the_layer_and_the_policy(tmp_path, policy):
    from layerwise.sae.train import train_layer_sae

    files = write_set(tmp_path / "data", policy, layer=4, bad={lang: set(range(N)) for lang in LANGS})
    with pytest.raises(LayerwiseError) as exc:
        train_layer_sae([files[lang][0] for lang in LANGS], tmp_path / "sae", SAEOptions(**TRAIN_OPTS))
    msg = str(exc.value)
    assert "layer 4" in msg and f"--nan_policy {policy}" in msg and "NaN/Inf" in msg
    assert not (tmp_path / "sae").exists() or not any((tmp_path / "sae").iterdir())


def _assert_not_published(root):
    left = sorted(p.name for p in root.iterdir()) if root.exists() else []
    assert left == [], f"a failed training left {left}"


def test_non_finite_weights_fail_and_publish_nothing(tmp_path):
    """A learning rate far too high makes the weights NaN: a failing task, not a published folder."""
    from layerwise.sae.train import train_layer_sae

    files = write_set(tmp_path / "data", "zero")
    with pytest.raises(LayerwiseError) as exc:
        train_layer_sae([files[lang][0] for lang in LANGS], tmp_path / "sae",
                        SAEOptions(**{**TRAIN_OPTS, "lr": 1e8, "epochs": 4}))
    msg = str(exc.value)
    assert f"layer {LAYER}" in msg and "non-finite" in msg and "'lr'" in msg and "--sae_lr" in msg
    _assert_not_published(tmp_path / "sae")


def test_uncounted_nan_rows_fail_and_publish_nothing(tmp_path):
    """NaN rows that nan_counts does not record reach the trainer: the check after training stops them."""
    from layerwise.sae.train import train_layer_sae

    files = write_set(tmp_path / "data", "keep", record=False)
    with pytest.raises(LayerwiseError, match=r"non-finite.*not published.*non-finite values in the input rows"):
        train_layer_sae([files[lang][0] for lang in LANGS], tmp_path / "sae", SAEOptions(**{**TRAIN_OPTS, "epochs": 4}))
    _assert_not_published(tmp_path / "sae")


def test_non_finite_metrics_fail_and_publish_nothing(tmp_path, monkeypatch):
    """Finite weights but a NaN figure on a split: still not published (checked before the folder's rename)."""
    from layerwise.sae import train as train_module

    files = write_set(tmp_path / "data", "zero")
    real = train_module.evaluate_split

    def nan_validation(sae, sources, options, split, device):
        stats = real(sae, sources, options, split, device)
        return {**stats, "explained_variance": float("nan")} if split == "validation" else stats

    monkeypatch.setattr(train_module, "evaluate_split", nan_validation)
    with pytest.raises(LayerwiseError, match=r"layer 2: .*non-finite metrics \(validation explained_variance=nan\)"):
        train_module.train_layer_sae([files[lang][0] for lang in LANGS], tmp_path / "sae",
                                     SAEOptions(**{**TRAIN_OPTS, "epochs": 4}))
    _assert_not_published(tmp_path / "sae")


# -- the analysis --------------------------------------------------------------------------------------------
class RecordingEncoder:
    """An SAE stand-in (`encode`) that keeps every row it is given."""

    held_out_ids = None

    def __init__(self, d_sae: int = 8):
        self.W = torch.randn(H, d_sae, generator=torch.Generator().manual_seed(5))
        self.rows = []

    def encode(self, x):
        self.rows.append(x.clone())
        return torch.relu(x @ self.W)


@pytest.mark.parametrize("policy", ["zero", "keep"])
def test_analysis_leaves_them_out_of_everything_and_says_so_once(tmp_path, policy):
    from layerwise.analysis import analyze

    n = 60
    bad = {"english": {1, 4, 9, 30, 41}, "arabic": {4, 12, 50}}
    files = {}
    for layer in (0, 1):
        # layer 0 has no excluded sample: the exclusion is per (layer, language) file
        for lang, (path, samples) in write_set(tmp_path / "data", policy, layer=layer, n=n, identity=False,
                                               bad=bad if layer == 1 else {lang: set() for lang in LANGS}).items():
            files[(layer, lang)] = (path, samples)
    enc = RecordingEncoder()
    res = analyze([p for p, _ in files.values()], tmp_path / "out", sae_dirs={1: enc}, views=("all",), folds=2,
                  permutations=0, report=True, sae_top_k=3)

    def usable(layer, lang):
        return [s for s in files[(layer, lang)][1] if not s.nan_count]

    probes, dirs = res["probes"].set_index(["layer", "language"]), res["directions"]
    for (layer, lang), _ in files.items():
        want = sum(s.gender in ("male", "female") for s in usable(layer, lang))
        assert probes.loc[(layer, lang), "n_samples"] == want, (layer, lang)
        assert set(dirs[(dirs.layer == layer) & (dirs.language == lang)].n_samples) == {want}
    # cross-lingual: the samples usable in both languages of the layer
    cross = res["crosslingual"].set_index("layer")
    for layer in (0, 1):
        both = {s.sample_id for s in usable(layer, "english")} & {s.sample_id for s in usable(layer, "arabic")}
        assert cross.loc[layer, "n_samples"] == len(both)
    # CKA: the samples usable in every file
    everywhere = set.intersection(*({s.sample_id for s in usable(*key)} for key in files))
    assert set(res["cka"].n_samples) == {len(everywhere)}
    # SAE latents: the encoder never saw a row of an excluded sample (no NaN/Inf, no zeroed row), and saw every
    # `all`-view row (not bos) of the others
    seen = torch.cat(enc.rows)
    assert bool(torch.isfinite(seen).all()) and not bool((seen == 0).all(dim=1).any())
    assert seen.shape[0] == sum(int((s.token_kinds != KIND["bos"]).sum()) for lang in LANGS for s in usable(1, lang))
    sae = res["sae_features"]
    for lang in LANGS:
        rows = sae[sae.language == lang]
        want = sum(s.gender in ("male", "female") for s in usable(1, lang))
        assert len(rows) and set(rows.n_selection + rows.n_heldout) == {want}
    # said once: one note, in the report and analysis.json; no per-view "left out" note for them
    nan_notes = [x for x in res["notes"] if x["stage"] == "nan"]
    assert len(nan_notes) == 1 and f"--nan_policy {policy}" in nan_notes[0]["message"]
    assert "layer 1 english 5 of 60" in nan_notes[0]["message"] and "layer 1 arabic 3 of 60" in nan_notes[0]["message"]
    assert not [x for x in res["notes"] if "left out of view" in x["message"]]
    summary = json.loads((tmp_path / "out" / "analysis.json").read_text())
    listed = {(e["layer"], e["language"]): e for e in summary["nan_excluded"]}
    assert set(listed) == {(1, "english"), (1, "arabic")}
    assert listed[(1, "english")]["sample_ids"] == [F.sample_ids(n)[i] for i in sorted(bad["english"])]
    assert {(i["layer"], i["language"]): i["nan_excluded"] for i in summary["inputs"]}[(1, "arabic")] == 3
    html = (tmp_path / "out" / "report.html").read_text()
    assert 'id="nan-excluded"' in html and "8 sample(s) in 2 layer file(s)" in html
