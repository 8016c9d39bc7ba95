"""Latent selection, firing-rate-matched random controls and cross-language overlap (layerwise.intervention),
on layer files and SAELens SAEs whose answer is known: no training, hand-set weights.

The planted SAE (d_in 8, d_sae 12): latent 3 reads e0 and latent 5 reads e1, each with bias -1.5, so latent 3
fires only on male text positions (which carry e0) and latent 5 only on female ones (e1); latents 7, 8 and 9
never fire (zero encoder, negative bias); the others read random directions in dims 2..7 (noise) with bias 0.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from layerwise.core import schema
from layerwise.core.errors import LayerwiseError
from layerwise.intervention.controls import (
    CONTROL_COLUMNS,
    controls_table,
    drawn_controls,
    firing_rate_bins,
    matched_random_sets,
)
from layerwise.intervention.options import InterventionOptions
from layerwise.intervention.overlap import MATCHED, SHARED, decoder_matching, language_overlap, pair_overlap
from layerwise.intervention.select import COLUMNS, rank_latents, select_latents
from layerwise.sae.options import SAEOptions
from tests.support.sae_synthetic import sample_kinds, write_layer_file

torch.set_num_threads(1)

H, D, LAYER = 8, 12, 2
MALE_LATENT, FEMALE_LATENT, DEAD = 3, 5, (7, 8, 9)
KIND = schema.TOKEN_KINDS
TEXT = (KIND["prompt"], KIND["caption"])


# ----------------------------------------------------------------------------------------------- fixtures
def planted_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w_enc = torch.zeros(H, D)
    w_enc[2:, :] = torch.randn(H - 2, D, generator=g)
    w_enc[:, MALE_LATENT] = 0
    w_enc[0, MALE_LATENT] = 1.0
    w_enc[:, FEMALE_LATENT] = 0
    w_enc[1, FEMALE_LATENT] = 1.0
    b_enc = torch.zeros(D)
    b_enc[[MALE_LATENT, FEMALE_LATENT]] = -1.5
    for j in DEAD:
        w_enc[:, j] = 0
        b_enc[j] = -1.0
    w_dec = torch.randn(D, H, generator=g)
    w_dec /= w_dec.norm(dim=1, keepdim=True)
    return {"W_enc": w_enc, "b_enc": b_enc, "W_dec": w_dec, "b_dec": torch.zeros(H)}


def make_sae(weights: dict[str, torch.Tensor]):
    from sae_lens import StandardSAE, StandardSAEConfig

    sae = StandardSAE(StandardSAEConfig(d_in=H, d_sae=D))
    with torch.no_grad():
        for name, value in weights.items():
            getattr(sae, name).copy_(value)
    return sae


def write_sae_folder(folder: Path, weights, *, layer: int, language: str, languages: list[str],
                     train: list[str], validation: list[str]) -> Path:
    """An SAE folder as layerwise.sae.train writes it: SAELens files, split.json, training.json."""
    make_sae(weights).save_model(folder)
    (folder / "split.json").write_text(json.dumps({
        "layer": layer, "language": language, "languages": languages, "validation_fraction": 0.25,
        "split_seed": 0, "train": train, "validation": validation}))
    (folder / "training.json").write_text(json.dumps({
        "options": SAEOptions(language=language).to_dict(), "layer": layer, "languages": languages,
        "d_in": H, "d_sae": D}))
    return folder


class Samples:
    """Per-sample rows and kinds with known genders: train (male/female/unknown) and validation ids."""

    def __init__(self, n: int = 48, seed: int = 1, contrary_validation: bool = True, language: str = "english"):
        g = torch.Generator().manual_seed(seed)
        self.ids = [f"{language[:2]}{i:03d}" for i in range(n)]
        self.genders = [("male", "female", "male", "female", "unknown", "female")[i % 6] for i in range(n)]
        self.validation = [s for i, s in enumerate(self.ids) if i % 5 == 2]
        self.train = [s for s in self.ids if s not in self.validation]
        self.rows, self.kinds = [], []
        for i, (sid, gender) in enumerate(zip(self.ids, self.genders)):
            kinds = sample_kinds(3, 2 + i % 2, 2 + i % 3)
            x = torch.zeros(len(kinds), H)
            x[:, 2:] = torch.randn(len(kinds), H - 2, generator=g)
            text = torch.isin(kinds, torch.tensor(TEXT, dtype=torch.int8))
            amp = 3.0 + float(torch.rand(1, generator=g))
            held = sid in self.validation
            if gender == "unknown":
                x[text, 0] = 9.0                                        # never in the selection
            elif held and contrary_validation:
                x[text, 1 if gender == "male" else 0] = 20.0            # the opposite signal, strong
                x[text, 9 % H] += 30.0
            else:
                x[text, 0 if gender == "male" else 1] = amp
            x[kinds == KIND["bos"]] = 500.0
            self.rows.append(x)
            self.kinds.append(kinds)

    def write(self, path: Path, *, language: str = "english", layout: str = "padded", layer: int = LAYER) -> Path:
        return write_layer_file(path, layer=layer, language=language, sample_ids=self.ids, rows=self.rows,
                                kinds=self.kinds, layout=layout, genders=self.genders)

    def pooled_codes(self, sae, kinds=TEXT) -> tuple[np.ndarray, np.ndarray]:
        """Independent reference: (pooled codes [n, D] of the male/female training samples, is_male [n])."""
        codes, male = [], []
        for sid, gender, x, k in zip(self.ids, self.genders, self.rows, self.kinds):
            if sid not in self.train or gender not in ("male", "female"):
                continue
            keep = torch.isin(k, torch.tensor(kinds, dtype=torch.int8))
            with torch.no_grad():
                codes.append(sae.encode(x[keep]).mean(0).double().numpy())
            male.append(gender == "male")
        return np.stack(codes), np.array(male)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("select")
    weights = planted_weights()
    en, ar = Samples(language="english", seed=1), Samples(language="arabic", seed=2)
    en.ids = ar.ids = [f"s{i:03d}" for i in range(len(en.ids))]       # one sample id set, as extraction writes
    for s in (en, ar):
        s.validation = [x for i, x in enumerate(s.ids) if i % 5 == 2]
        s.train = [x for x in s.ids if x not in s.validation]
    files = {"english": en.write(root / "layer_2_english.pt", language="english"),
             "arabic": ar.write(root / "layer_2_arabic.pt", language="arabic")}
    pooled = write_sae_folder(root / "sae" / "layer_2", weights, layer=LAYER, language="pooled",
                              languages=["arabic", "english"], train=en.train, validation=en.validation)
    return {"root": root, "weights": weights, "samples": {"english": en, "arabic": ar}, "files": files,
            "pooled": pooled}


# ----------------------------------------------------------------------------------------------- selection
def test_planted_latents_rank_first_with_their_signs_and_dead_latents_are_never_selected(planted):
    df = select_latents(list(planted["files"].values()), planted["pooled"], InterventionOptions(k=6))
    assert list(df.columns) == list(COLUMNS)
    assert sorted(df.feature_language.unique()) == ["arabic", "english"]          # a pooled SAE: one per language
    for lang, t in df.groupby("feature_language"):
        t = t.set_index("latent")
        assert len(t) == D and (t.sae == "layer_2").all() and (t.layer == LAYER).all()
        top = t[t.selected].sort_values("rank")
        assert len(top) == 6 and top["rank"].tolist() == list(range(1, 7))
        assert set(top.index[:2]) == {MALE_LATENT, FEMALE_LATENT}
        assert t.loc[MALE_LATENT, "sign"] == 1 and t.loc[FEMALE_LATENT, "sign"] == -1
        assert t.loc[MALE_LATENT, "mean_female"] == 0 and t.loc[FEMALE_LATENT, "mean_male"] == 0
        assert sorted(t.index[t.dead]) == list(DEAD)
        assert (t.loc[list(DEAD), "firing_rate"] == 0).all() and not t.loc[list(DEAD), "selected"].any()
        assert t["rank"].isna().sum() == D - 6 and (t.n_male > 0).all() and (t.n_female > 0).all()
        samples = planted["samples"][lang]
        n_m = sum(s in samples.train and g == "male" for s, g in zip(samples.ids, samples.genders))
        assert t.n_male.iloc[0] == n_m
        assert t.loc[MALE_LATENT, "firing_rate"] == pytest.approx(n_m / (t.n_male.iloc[0] + t.n_female.iloc[0]))


def test_statistics_equal_a_direct_computation_on_pooled_codes(planted):
    sae = make_sae(planted["weights"])
    samples = planted["samples"]["english"]
    z, male = samples.pooled_codes(sae)
    zm, zf = z[male], z[~male]
    diff = zm.mean(0) - zf.mean(0)
    sd = np.sqrt(((len(zm) - 1) * zm.var(0, ddof=1) + (len(zf) - 1) * zf.var(0, ddof=1)) / (len(z) - 2))
    d = np.where(sd > 0, diff / np.where(sd > 0, sd, 1), 0.0)
    # many small chunks and encode batches: the chunked moments must merge to the same numbers
    for kwargs in ({}, {"chunk_bytes": 4 * H * 7, "batch_rows": 5}):
        df = select_latents(planted["files"]["english"], planted["pooled"], InterventionOptions(k=4), "english",
                            **kwargs).sort_values("latent")
        np.testing.assert_allclose(df.mean_male, zm.mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(df.mean_female, zf.mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(df.difference, diff, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(df.cohens_d, d, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(df.firing_rate, (z > 0).mean(0))
        assert (df.cohens_d[df.dead] == 0).all()


def test_samples_with_nan_at_extraction_are_left_out(planted):
    """A sample whose file records NaN/Inf values at extraction (nan_counts > 0) is not data: the statistics equal
    a direct computation without it."""
    import copy
    import dataclasses

    from layerwise.layerfile.reader import open_layer_file

    samples = planted["samples"]["english"]
    lf = open_layer_file(planted["files"]["english"])
    bad = [i for i, sid in enumerate(lf.sample_ids) if sid in samples.train][:6]
    counts = lf.nan_counts.clone()
    counts[bad] = 3
    flagged = dataclasses.replace(lf, nan_counts=counts)
    sae = make_sae(planted["weights"])
    kept = copy.copy(samples)
    kept.train = [s for s in samples.train if s not in {lf.sample_ids[i] for i in bad}]
    z, male = kept.pooled_codes(sae)
    df = select_latents(flagged, planted["pooled"], InterventionOptions(k=4), "english").sort_values("latent")
    np.testing.assert_allclose(df.mean_male, z[male].mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(df.mean_female, z[~male].mean(0), rtol=1e-5, atol=1e-6)


def test_only_training_samples_of_known_gender_are_used(planted, tmp_path):
    """The validation samples carry the opposite signal (and unknown-gender samples a huge one): a file whose
    validation samples are neutral gives the same table."""
    neutral = Samples(language="english", seed=1, contrary_validation=False)
    neutral.ids = planted["samples"]["english"].ids
    path = neutral.write(tmp_path / "layer_2_english.pt")
    opts = InterventionOptions(k=4)
    a = select_latents(planted["files"]["english"], planted["pooled"], opts, "english")
    b = select_latents(path, planted["pooled"], opts, "english")
    pd.testing.assert_frame_equal(a, b)
    assert set(a[a.selected].sort_values("rank").latent.head(2)) == {MALE_LATENT, FEMALE_LATENT}
    # the held-out samples alone would reverse the signs: proof that the contrary signal is really there
    folder = tmp_path / "sae_val"
    s = planted["samples"]["english"]
    write_sae_folder(folder, planted["weights"], layer=LAYER, language="pooled", languages=["english"],
                     train=s.validation, validation=s.train)
    rev = select_latents(planted["files"]["english"], folder, opts, "english").set_index("latent")
    assert rev.loc[MALE_LATENT, "sign"] == -1 and rev.loc[FEMALE_LATENT, "sign"] == 1


def test_ragged_layout_gives_the_same_table(planted, tmp_path):
    ragged = planted["samples"]["english"].write(tmp_path / "layer_2_english.pt", layout="ragged")
    opts = InterventionOptions(k=4)
    a = select_latents(planted["files"]["english"], planted["pooled"], opts, "english")
    b = select_latents(ragged, planted["pooled"], opts, "english", chunk_bytes=4 * H * 9)
    pd.testing.assert_frame_equal(a, b, rtol=1e-5)


def test_k_above_the_live_latents_raises_with_the_counts(planted):
    with pytest.raises(LayerwiseError, match=r"layer 2, SAE layer_2.*: 9 live latents, fewer than the 10 needed \(k=10.*9 live and 3 dead"):
        select_latents(planted["files"]["english"], planted["pooled"], InterventionOptions(k=10), "english")
    df = select_latents(planted["files"]["english"], planted["pooled"], InterventionOptions(k=9), "english")
    assert df.selected.sum() == 9 and not (df.selected & df.dead).any()


def test_rankings_cohens_d_and_per_sign(planted):
    f, sae = planted["files"]["english"], planted["pooled"]
    d = select_latents(f, sae, InterventionOptions(k=4, ranking="cohens_d"), "english")
    top = d[d.selected].sort_values("rank")
    assert set(top.latent.head(2)) == {MALE_LATENT, FEMALE_LATENT}
    assert (top.cohens_d.abs().diff().dropna() <= 0).all()
    ps = select_latents(f, sae, InterventionOptions(k=6, ranking="per_sign"), "english")
    sel = ps[ps.selected]
    assert (sel.sign == 1).sum() == 3 and (sel.sign == -1).sum() == 3
    assert MALE_LATENT in set(sel.latent) and FEMALE_LATENT in set(sel.latent)
    live = ps[~ps.dead]
    pos = live[live.difference > 0].sort_values("difference", ascending=False).latent.head(3)
    neg = live[live.difference < 0].sort_values("difference").latent.head(3)
    assert set(sel.latent) == set(pos) | set(neg)


def test_pool_kinds_decide_the_positions(planted):
    """Over image positions (no signal there) the planted latents never fire: dead, never selected."""
    df = select_latents(planted["files"]["english"], planted["pooled"],
                        InterventionOptions(k=2, pool_kinds="image"), "english").set_index("latent")
    assert df.loc[MALE_LATENT, "dead"] and df.loc[FEMALE_LATENT, "dead"]
    assert not df.loc[[MALE_LATENT, FEMALE_LATENT], "selected"].any()


def test_rank_ties_are_broken_by_latent_index():
    t = pd.DataFrame({"latent": np.arange(6), "difference": [0.5, -2.0, 2.0, 2.0, 0.0, -0.5],
                      "cohens_d": [1.0, -1.0, 1.0, 1.0, 0.0, -1.0], "dead": [False] * 5 + [True]})
    r = rank_latents(t, 3, "difference")
    assert r.sort_values("rank").latent[r.selected].tolist() == [1, 2, 3]
    r = rank_latents(t, 3, "cohens_d")
    assert r.sort_values("rank").latent[r.selected].tolist() == [0, 1, 2]   # 5 is dead
    with pytest.raises(LayerwiseError, match=r"1 live latents with a negative difference.*fewer than the 2 needed \(k=4"):
        rank_latents(t, 4, "per_sign", where="x")


def test_sae_language_and_layer_are_checked(planted, tmp_path):
    s = planted["samples"]["english"]
    per_lang = write_sae_folder(tmp_path / "layer_2_arabic", planted["weights"], layer=LAYER, language="arabic",
                                languages=["arabic"], train=s.train, validation=s.validation)
    with pytest.raises(LayerwiseError, match="trained on 'arabic' only"):
        select_latents(list(planted["files"].values()), per_lang, InterventionOptions(k=2), "english")
    df = select_latents(list(planted["files"].values()), per_lang, InterventionOptions(k=2))
    assert set(df.feature_language) == {"arabic"} and set(df.sae) == {"layer_2_arabic"}
    other = write_sae_folder(tmp_path / "layer_5", planted["weights"], layer=5, language="pooled",
                             languages=["english"], train=s.train, validation=s.validation)
    with pytest.raises(LayerwiseError, match="trained on layer 5, not on layer 2"):
        select_latents(planted["files"]["english"], other, InterventionOptions(k=2))


def test_sae_on_one_vector_per_sample_is_refused(planted):
    """The hooks apply the SAE per token: one trained on pooled (mean) or last-position vectors is refused."""
    import dataclasses

    from layerwise.layerfile.reader import open_layer_file

    files = [open_layer_file(f) for f in planted["files"].values()]
    assert len(select_latents(files, planted["pooled"], InterventionOptions(k=2))) > 0     # per-token: fine
    for selection in schema.PER_SAMPLE_SELECTIONS:
        pooled = [dataclasses.replace(lf, token_selection=selection) for lf in files]
        with pytest.raises(LayerwiseError, match=f"one vector per sample \\(--token_selection {selection}\\)"):
            select_latents(pooled, planted["pooled"], InterventionOptions(k=2))


# ----------------------------------------------------------------------------------------------- controls
def control_table(n: int = 400, n_dead: int = 100, k: int = 20, seed: int = 3, top_heavy: bool = False):
    rng = np.random.default_rng(seed)
    rate = rng.beta(0.5, 3.0, n)
    dead = np.zeros(n, dtype=bool)
    dead[rng.choice(n, n_dead, replace=False)] = True
    rate[dead] = 0.0
    live = np.flatnonzero(~dead)
    if top_heavy:                                       # the targeted latents are the most frequent ones
        chosen = live[np.argsort(-rate[live], kind="stable")[:k]]
    else:
        chosen = rng.choice(live, k, replace=False)
    sel = np.zeros(n, dtype=bool)
    sel[chosen] = True
    return pd.DataFrame({"layer": 4, "feature_language": "english", "sae": "layer_4", "latent": np.arange(n),
                         "firing_rate": rate, "dead": dead, "selected": sel})


def bin_histogram(df: pd.DataFrame, latents, bins: int) -> dict[int, int]:
    live = df[~df.dead]
    _, b = firing_rate_bins(live.firing_rate.to_numpy(), bins)
    bin_of = dict(zip(live.latent.tolist(), b.tolist()))
    return dict(zip(*np.unique([bin_of[x] for x in latents], return_counts=True)))


def test_random_sets_match_the_targeted_bins_and_avoid_targeted_and_dead_latents():
    df = control_table()
    targeted = set(df.latent[df.selected])
    dead = set(df.latent[df.dead])
    sets = matched_random_sets(df, 20, 8, 5, 42, 4, "english")
    assert len(sets) == 8
    want = bin_histogram(df, targeted, 5)
    for s in sets:
        assert len(s) == 20 and len(set(s)) == 20 and s == sorted(s)
        assert not set(s) & targeted and not set(s) & dead
        assert bin_histogram(df, s, 5) == want
    assert len({tuple(s) for s in sets}) == 8                                   # different runs differ


def test_run_r_does_not_depend_on_the_number_of_runs_or_the_chunk():
    df = control_table()
    five = matched_random_sets(df, 20, 5, 10, 42, 4, "english")
    ten = matched_random_sets(df, 20, 10, 10, 42, 4, "english")
    assert ten[:5] == five
    assert matched_random_sets(df, 20, 10, 10, 42, 4, "english", first_run=5) == ten[5:]
    assert matched_random_sets(df, 20, 5, 10, 43, 4, "english") != five          # the seed matters
    assert matched_random_sets(df.assign(feature_language="arabic"), 20, 5, 10, 42, 4, "arabic") != five


def test_a_bin_that_runs_out_borrows_from_the_nearest_bins_and_says_so():
    df = control_table(k=40, top_heavy=True)          # 40 targeted in the top bins of 30 live latents each
    t = drawn_controls(df, 40, 3, 10, 42, 4, "english")
    assert list(t.columns) == list(CONTROL_COLUMNS) and len(t) == 3 * 40
    for _, g in t.groupby("run"):
        assert g.latent.nunique() == 40 and not set(g.latent) & set(df.latent[df.selected | df.dead])
        assert g.borrowed.any() and (g.loc[g.borrowed, "bin"] < g.loc[g.borrowed, "target_bin"]).all()
        assert (g.loc[~g.borrowed, "bin"] == g.loc[~g.borrowed, "target_bin"]).all()
        assert bin_histogram(df, g.latent, 10) != bin_histogram(df, df.latent[df.selected], 10)
    sets = matched_random_sets(df, 40, 3, 10, 42, 4, "english")
    assert t.groupby("run").latent.apply(sorted).tolist() == sets
    simple = controls_table(sets[1:], 4, "english", first_run=1)
    assert list(simple.columns) == ["layer", "feature_language", "run", "latent"] and len(simple) == 80
    pd.testing.assert_frame_equal(simple, t[t.run > 0][list(simple.columns)].reset_index(drop=True))


def test_too_few_candidates_raise():
    df = control_table(n=60, n_dead=30, k=20)
    with pytest.raises(LayerwiseError, match="10 candidate latents.*20 random draws"):
        matched_random_sets(df, 20, 2, 5, 0, 4, "english")
    with pytest.raises(LayerwiseError, match="20 selected latents, not k=10"):
        matched_random_sets(df, 10, 2, 5, 0, 4, "english")


# ----------------------------------------------------------------------------------------------- overlap
def two_languages(sel_b, *, sae_b: str = "layer_4", n: int = 300, k: int = 20, seed: int = 5):
    base = control_table(n=n, n_dead=60, k=k, seed=seed)
    b = base.assign(feature_language="arabic", sae=sae_b)
    b["selected"] = b.latent.isin(sel_b)
    return pd.concat([base, b], ignore_index=True), base


def test_shared_dictionary_overlap_identical_and_disjoint():
    df, base = two_languages([])
    same, _ = two_languages(base.latent[base.selected])
    r = pair_overlap(same, 4, "english", "arabic", n_null=200, seed=1)
    assert r["method"] == SHARED and r["jaccard"] == 1.0 and r["intersection"] == 20
    assert r["null_mean"] < 0.3 and r["p_value"] <= 1 / 201 + 1e-12
    live = base.latent[~base.dead & ~base.selected].to_numpy()
    disjoint, _ = two_languages(live[:20])
    r = pair_overlap(disjoint, 4, "english", "arabic", n_null=200, seed=1)
    assert r["jaccard"] == 0.0 and r["p_value"] == 1.0
    table = language_overlap(same, n_null=50)
    assert len(table) == 1 and table.languages.iloc[0] == "arabic,english" and table.jaccard.iloc[0] == 1.0


def test_matching_by_decoder_cosine_finds_a_permuted_dictionary():
    n, h = 300, 32
    rng = np.random.default_rng(0)
    w_a = rng.normal(size=(n, h))
    perm = rng.permutation(n)
    w_b = 1.7 * w_a[perm] + 0.01 * rng.normal(size=(n, h))       # b's latent j is a's latent perm[j]
    ia, ib, cos = decoder_matching(torch.tensor(w_a), w_b)
    assert (perm[ib] == ia).all() and (cos > 0.99).all()
    inverse = np.argsort(perm)                                     # a's latent i is b's latent inverse[i]
    base = control_table(n=n, n_dead=0, k=20, seed=5)
    sel_a = base.latent[base.selected].to_numpy()
    df_same, _ = two_languages(inverse[sel_a], sae_b="layer_4_arabic", n=n)
    df_same["sae"] = np.where(df_same.feature_language == "english", "layer_4_english", "layer_4_arabic")
    df_same["dead"] = False
    df_same.loc[df_same.feature_language == "english", "selected"] = df_same.latent.isin(sel_a)
    with pytest.raises(LayerwiseError, match="do not correspond"):
        pair_overlap(df_same, 4, "english", "arabic", n_null=10)
    r = pair_overlap(df_same, 4, "english", "arabic", decoders=(w_a, w_b), n_null=100)
    assert r["method"] == MATCHED and r["jaccard"] == 1.0 and r["matched_pairs"] == n
    assert r["matched_cosine"] > 0.99 and r["p_value"] <= 1 / 101 + 1e-12
    assert pair_overlap(df_same, 4, "english", "arabic", decoders=(w_a, w_a), n_null=20)["jaccard"] < 0.5
    table = language_overlap(df_same, {"layer_4_english": w_a, "layer_4_arabic": w_b}, n_null=20)
    assert table.method.tolist() == [MATCHED] and table.jaccard.tolist() == [1.0]


def test_overlap_of_per_language_sae_folders(planted, tmp_path):
    """Two per-language SAE folders, the second a permuted copy of the first: the matching (from the folders'
    decoders) maps latents 3 and 5 onto their copies."""
    s, w = planted["samples"], planted["weights"]
    perm = np.random.default_rng(0).permutation(D)          # arabic latent j is english latent perm[j]
    w_ar = {"W_enc": w["W_enc"][:, perm], "b_enc": w["b_enc"][perm], "W_dec": w["W_dec"][perm], "b_dec": w["b_dec"]}
    folders = {(LAYER, "english"): write_sae_folder(tmp_path / "layer_2_english", w, layer=LAYER, language="english",
                                                    languages=["english"], train=s["english"].train,
                                                    validation=s["english"].validation),
               (LAYER, "arabic"): write_sae_folder(tmp_path / "layer_2_arabic", w_ar, layer=LAYER, language="arabic",
                                                   languages=["arabic"], train=s["arabic"].train,
                                                   validation=s["arabic"].validation)}
    opts = InterventionOptions(k=2, firing_bins=3)
    df = pd.concat([select_latents(list(planted["files"].values()), folders[(LAYER, lang)], opts)
                    for lang in ("english", "arabic")], ignore_index=True)
    ar = df[df.feature_language == "arabic"]
    inverse = np.argsort(perm)
    assert set(ar.latent[ar.selected]) == {int(inverse[MALE_LATENT]), int(inverse[FEMALE_LATENT])}
    t = language_overlap(df, folders, opts, n_null=30)
    assert t.method.tolist() == [MATCHED] and t.jaccard.tolist() == [1.0]
    assert t.matched_cosine.iloc[0] == pytest.approx(1.0)


def test_overlap_of_a_real_selection(planted):
    df = select_latents(list(planted["files"].values()), planted["pooled"], InterventionOptions(k=2))
    t = language_overlap(df, n_null=50)
    assert t.method.tolist() == [SHARED] and t.jaccard.tolist() == [1.0]      # {3, 5} in both languages
