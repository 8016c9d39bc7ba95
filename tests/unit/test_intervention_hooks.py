"""Latent hooks on the one loaded model and greedy caption generation (layerwise.intervention.hooks / .generate),
on the tiny fixture of every family, with hand-set SAEs (no training): cases whose answer is known."""
import copy

import numpy as np
import pytest
import torch

from layerwise.core.errors import LayerwiseError
from layerwise.intervention.generate import generate_captions, generate_ids, generation_inputs
from layerwise.intervention.hooks import HookError, latent_hooks
from layerwise.models.capture import decoder_layers
from layerwise.models.inputs import load_rgb
from tests.support import families

PROMPT = "Describe this image."
NEW = 6                    # new tokens per caption: small, the fixtures are random models
IMAGES = (0, 1, 3)         # fixture images of different sizes: dynamic families pad their batches


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread for this module (restored after it): the fixtures' matrices are tiny, and on a busy
    machine a second thread only waits for a core (a generation call took 100x longer with two threads)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def loaded_models(fixture_dir):
    """model_type -> LoadedModel, each family loaded once (float32, CPU) for the whole module."""
    from layerwise.models.loading import load_model

    cache = {}

    def get(model_type):
        if model_type not in cache:
            cache[model_type] = load_model(str(families.family_paths(fixture_dir)[model_type]), dtype="float32",
                                           device="cpu")
        return cache[model_type]

    return get


@pytest.fixture(scope="module")
def images(fixture_dir):
    return [load_rgb(fixture_dir / "data" / "images" / f"s{i:03d}.png") for i in IMAGES]


def standard_sae(d_in, d_sae, seed, *, bias=True):
    """A SAELens StandardSAE with seeded random weights: relu((x - b_dec) W_enc + b_enc), decoded h W_dec + b_dec."""
    from sae_lens import StandardSAE, StandardSAEConfig

    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, apply_b_dec_to_input=bias))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=g) / d_in ** 0.5)
        sae.W_dec.copy_(torch.randn(d_sae, d_in, generator=g) / d_in ** 0.5)
        sae.b_enc.copy_(0.1 * torch.randn(d_sae, generator=g) if bias else torch.zeros(d_sae))
        sae.b_dec.copy_(0.1 * torch.randn(d_in, generator=g) if bias else torch.zeros(d_in))
    return sae


def exact_sae(d_in):
    """An SAE that reconstructs exactly: d_sae = 2 d_in, codes relu(x) and relu(-x), decoded relu(x) - relu(-x) = x."""
    from sae_lens import StandardSAE, StandardSAEConfig

    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=2 * d_in, apply_b_dec_to_input=False))
    eye = torch.eye(d_in)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


class PlainSAE(torch.nn.Module):
    """Not a SAELens class: anything with encode, decode, W_dec and b_dec."""

    def __init__(self, sae):
        super().__init__()
        self.W_enc = torch.nn.Parameter(sae.W_enc.detach().clone())
        self.b_enc = torch.nn.Parameter(sae.b_enc.detach().clone())
        self.W_dec = torch.nn.Parameter(sae.W_dec.detach().clone())
        self.b_dec = torch.nn.Parameter(sae.b_dec.detach().clone())

    def encode(self, x):
        return torch.relu((x - self.b_dec) @ self.W_enc + self.b_enc)

    def decode(self, h):
        return h @ self.W_dec + self.b_dec


def hooked_layers(lm):
    """Two decoder layers to hook: the second and the last (Mllama's last is a cross-attention layer)."""
    return 1, lm.num_layers - 1


def last_logits(lm, inputs):
    with torch.no_grad():
        return lm.model(**inputs).logits[:, -1].float()


# ---------------------------------------------------------------- generation, every family
@pytest.mark.parametrize("model_type", families.FAMILIES)
def test_generation_is_deterministic_batch_independent_and_empty_edits_change_nothing(model_type, loaded_models,
                                                                                     images):
    lm = loaded_models(model_type)
    side = lm.processor.tokenizer.padding_side
    ids = generate_ids(lm, images, PROMPT, max_new_tokens=NEW, batch_size=2)
    captions = generate_captions(lm, images, PROMPT, max_new_tokens=NEW, batch_size=2)
    assert lm.processor.tokenizer.padding_side == side           # left padding only during generation
    assert len(captions) == len(images) and all(isinstance(c, str) for c in captions)
    assert all(1 <= len(row) <= NEW for row in ids)
    # re-run: identical; each image's tokens do not depend on its batch neighbours or its position in a batch
    assert generate_captions(lm, images, PROMPT, max_new_tokens=NEW, batch_size=2) == captions
    assert generate_ids(lm, images, PROMPT, max_new_tokens=NEW, batch_size=1) == ids
    assert generate_ids(lm, images[::-1], PROMPT, max_new_tokens=NEW, batch_size=3) == ids[::-1]
    # an empty latent set with the residual hook is exactly the model, at every position or generated ones only
    d = lm.hidden_size
    edits = {layer: (standard_sae(d, 4 * d, seed=layer), []) for layer in hooked_layers(lm)}
    for positions in ("all", "generated"):
        with latent_hooks(lm.model, edits, hook="residual", positions=positions) as hooks:
            assert generate_ids(lm, images, PROMPT, max_new_tokens=NEW, batch_size=2, hooks=hooks) == ids
            assert generate_captions(lm, images, PROMPT, max_new_tokens=NEW, batch_size=2, hooks=hooks) == captions
        assert all(n > 0 for n in hooks.fired.values())


@pytest.mark.parametrize("model_type", families.FAMILIES)
def test_residual_hook_equals_the_formula_recomputed_by_hand(model_type, loaded_models, images):
    """One forward pass with the hook on layer L against a plain hook written here with the formula
    x - (1 - scale) * sum_{j in A} relu((x - b_dec) W_enc + b_enc)_j W_dec[j], on the same SAE."""
    lm = loaded_models(model_type)
    layer, d = 1, lm.hidden_size
    sae = standard_sae(d, 4 * d, seed=7)
    latents = [0, 3, 5, 17, 40, 41, 99, 200]
    inputs = generation_inputs(lm, images[:1], PROMPT)
    base = last_logits(lm, inputs)
    module = decoder_layers(lm.model)[layer]

    def by_hand(scale):
        def hook(_m, _a, output):
            x = output[0] if isinstance(output, tuple) else output
            h = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)[..., latents]
            new = x - (1 - scale) * h @ sae.W_dec[latents]
            return (new, *output[1:]) if isinstance(output, tuple) else new
        return hook

    def capture(store):
        def hook(_m, _a, output):
            store.append(output[0] if isinstance(output, tuple) else output)
        return hook

    for scale in (0.0, 0.5, 3.0):
        got, want = [], []
        with latent_hooks(lm.model, {layer: (sae, latents)}, scale=scale) as hooks:
            handle = module.register_forward_hook(capture(got))   # after the latent hook: sees its output
            try:
                logits = last_logits(lm, inputs)
            finally:
                handle.remove()
        assert hooks.fired == {layer: 1} and hooks.edited == {layer: inputs["input_ids"].numel()}
        handles = [module.register_forward_hook(by_hand(scale)), module.register_forward_hook(capture(want))]
        try:
            expected = last_logits(lm, inputs)
        finally:
            for h in handles:
                h.remove()
        torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
        assert (logits - base).abs().max() > 1e-3                # the edit did something


def test_residual_hook_accepts_any_object_and_the_generic_path_agrees(loaded_models, images, monkeypatch):
    """A plain module with encode/decode/W_dec/b_dec gives what the SAELens SAE gives; the decode-difference path
    (used for SAEs with run-time normalisation) agrees with the W_dec-rows path on a linear SAE; scale 1 and an
    empty set leave the model as it is."""
    from layerwise.intervention import hooks as hooks_module

    lm = loaded_models("gemma3")
    d = lm.hidden_size
    sae = standard_sae(d, 4 * d, seed=3)
    latents = list(range(0, 4 * d, 5))
    inputs = generation_inputs(lm, images[:1], PROMPT)
    base = last_logits(lm, inputs)
    with latent_hooks(lm.model, {2: (sae, latents)}):
        ablated = last_logits(lm, inputs)
    with latent_hooks(lm.model, {2: (PlainSAE(sae), latents)}):
        torch.testing.assert_close(last_logits(lm, inputs), ablated, rtol=1e-5, atol=1e-5)
    with latent_hooks(lm.model, {2: (sae, latents)}, scale=1.0):
        assert torch.equal(last_logits(lm, inputs), base)
    with latent_hooks(lm.model, {2: (sae, [])}):
        assert torch.equal(last_logits(lm, inputs), base)
    monkeypatch.setattr(hooks_module, "_linear_decoder", lambda _sae: False)
    with latent_hooks(lm.model, {2: (sae, latents)}) as hooks:
        assert hooks.edits[2].rows is None
        torch.testing.assert_close(last_logits(lm, inputs), ablated, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model_type", families.FAMILIES)
def test_two_hooked_layers_both_fire_and_edit_the_expected_positions(model_type, loaded_models, images):
    """Batch of one: the prefill pass covers the T prompt positions, each later step one position, and the last
    generated token is never fed back: g new tokens take g passes, T + g - 1 positions, g - 1 of them generated."""
    lm = loaded_models(model_type)
    d = lm.hidden_size
    layers = hooked_layers(lm)
    edits = {layer: (standard_sae(d, 4 * d, seed=layer), list(range(0, 4 * d, 3))) for layer in layers}
    prompt_len = generation_inputs(lm, images[:1], PROMPT)["input_ids"].shape[1]
    for positions in ("all", "generated"):
        with latent_hooks(lm.model, edits, positions=positions) as hooks:
            new = len(generate_ids(lm, images[:1], PROMPT, max_new_tokens=NEW, hooks=hooks)[0])
        edited = prompt_len + new - 1 if positions == "all" else new - 1
        assert hooks.fired == {layer: new for layer in layers}, positions
        assert hooks.edited == {layer: edited for layer in layers}, positions


@pytest.mark.parametrize("model_type", families.FAMILIES)
def test_reconstruction_with_an_exact_sae_and_no_latent_is_the_model(model_type, loaded_models, images):
    lm = loaded_models(model_type)
    layers = hooked_layers(lm)
    inputs = generation_inputs(lm, images[:1], PROMPT)
    base_logits = last_logits(lm, inputs)
    base = generate_ids(lm, images, PROMPT, max_new_tokens=NEW, batch_size=3)
    edits = {layer: (exact_sae(lm.hidden_size), []) for layer in layers}
    with latent_hooks(lm.model, edits, hook="reconstruction") as hooks:
        torch.testing.assert_close(last_logits(lm, inputs), base_logits, rtol=0, atol=1e-6)
        assert generate_ids(lm, images, PROMPT, max_new_tokens=NEW, batch_size=3, hooks=hooks) == base
    assert all(n > 0 for n in hooks.fired.values())


def test_reconstruction_changes_the_model_by_the_reconstruction_error_even_without_latents(loaded_models, images):
    """What the docstring says: an inexact SAE replaces x by its reconstruction, so A empty is not the model
    (the residual hook with the same SAE is)."""
    lm = loaded_models("gemma3")
    inputs = generation_inputs(lm, images[:1], PROMPT)
    base = last_logits(lm, inputs)
    sae = standard_sae(lm.hidden_size, 4 * lm.hidden_size, seed=11)
    with latent_hooks(lm.model, {1: (sae, [])}, hook="reconstruction"):
        assert (last_logits(lm, inputs) - base).abs().max() > 1e-2
    with latent_hooks(lm.model, {1: (sae, [])}, hook="residual"):
        assert torch.equal(last_logits(lm, inputs), base)


# ---------------------------------------------------------------- the one model
def test_a_hook_on_a_deep_copy_never_fires(loaded_models, images):
    """The research bug: the second layer of a "combined" run was hooked on a second copy of the model, which
    never ran. The counter shows it; generate_captions refuses hooks of another model object."""
    lm = loaded_models("gemma3")
    d = lm.hidden_size
    edits = {2: (standard_sae(d, 4 * d, seed=2), list(range(4 * d)))}
    base = generate_captions(lm, images[:2], PROMPT, max_new_tokens=NEW)
    twin = copy.deepcopy(lm.model)
    with latent_hooks(twin, edits) as on_copy:
        assert generate_captions(lm, images[:2], PROMPT, max_new_tokens=NEW) == base
        assert on_copy.fired == {2: 0} and on_copy.edited == {2: 0}
        with pytest.raises(LayerwiseError, match="another model object"):
            generate_captions(lm, images[:2], PROMPT, max_new_tokens=NEW, hooks=on_copy)
    with latent_hooks(lm.model, edits) as on_model:
        ablated = generate_ids(lm, images[:2], PROMPT, max_new_tokens=NEW, hooks=on_model)
    assert on_model.fired[2] > 0
    assert ablated != generate_ids(lm, images[:2], PROMPT, max_new_tokens=NEW)


def test_hooks_are_removed_on_exit_and_on_error(loaded_models):
    lm = loaded_models("gemma3")
    model, d = lm.model, lm.hidden_size
    modules = [model.get_decoder(), *decoder_layers(model)]

    def registered():
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in modules)

    before = registered()
    edits = {0: (standard_sae(d, 8, seed=0), [1]), 3: (standard_sae(d, 8, seed=1), [2])}
    with latent_hooks(model, edits) as hooks:
        assert registered() == before + 3 and hooks.attached
    assert registered() == before and not hooks.attached
    with pytest.raises(RuntimeError, match="boom"):
        with latent_hooks(model, edits):
            raise RuntimeError("boom")
    assert registered() == before
    with pytest.raises(LayerwiseError, match="not attached"):
        generate_captions(lm, [], PROMPT, hooks=hooks)


def test_invalid_edits_are_refused(loaded_models):
    lm = loaded_models("gemma3")
    model, d = lm.model, lm.hidden_size
    sae = standard_sae(d, 8, seed=0)
    bad = [({lm.num_layers: (sae, [0])}, {}, "not a decoder layer"),
           ({-1: (sae, [0])}, {}, "not a decoder layer"),
           ({0: (sae, [8])}, {}, r"outside the SAE's 0\.\.7"),
           ({0: (standard_sae(d + 1, 8, seed=0), [0])}, {}, "hidden size is 64"),
           ({0: (object(), [0])}, {}, "no W_dec"),
           ({0: sae}, {}, "expected \\(sae, latent indices\\)"),
           ({}, {}, "edits is empty"),
           ({0: (sae, [0])}, {"hook": "mean"}, "must be one of residual, reconstruction"),
           ({0: (sae, [0])}, {"positions": "prompt"}, "must be one of all, generated"),
           ({0: (sae, [0])}, {"scale": -1}, "must be >= 0")]
    for edits, options, message in bad:
        with pytest.raises(HookError, match=message):
            with latent_hooks(model, edits, **options):
                pass
    assert all(not m._forward_hooks for m in decoder_layers(model))


def test_generated_positions_with_explicit_prompt_lengths(loaded_models, images):
    """prompt_lengths per row: a right-padded prefix of each row is left alone, the rest edited."""
    lm = loaded_models("gemma3")
    d = lm.hidden_size
    inputs = generation_inputs(lm, images[:2], PROMPT)
    t = inputs["input_ids"].shape[1]
    edits = {1: (standard_sae(d, 4 * d, seed=5), list(range(4 * d)))}
    base = last_logits(lm, inputs)
    with latent_hooks(lm.model, edits, positions="generated", prompt_lengths=[t - 3, t]) as hooks:
        edited = last_logits(lm, inputs)
    assert hooks.edited == {1: 3}
    assert not torch.allclose(edited[0], base[0]) and torch.equal(edited[1], base[1])
    with latent_hooks(lm.model, edits, positions="generated", prompt_lengths=[t, t]) as hooks:
        assert torch.equal(last_logits(lm, inputs), base)
    assert hooks.fired == {1: 1} and hooks.edited == {1: 0}


# ---------------------------------------------------------------- a planted latent
def planted_sae(direction: torch.Tensor, x: torch.Tensor, others: int = 15):
    """(SAE, the other latents' directions): latent 0 has encoder `direction` (unit) and decoder 1.5 direction;
    latents 1..others are unit directions orthogonal to it with x . r = x . direction (each fires exactly as much as
    latent 0 on `x`: a multiple of x's part orthogonal to the direction plus a seeded random part orthogonal to
    both), decoders 1.5 r. No biases."""
    from sae_lens import StandardSAE, StandardSAEConfig

    d = direction.shape[0]
    a = float(x @ direction)
    rest = x - a * direction                                # x's part orthogonal to the direction
    g = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.cat([direction[:, None], rest[:, None], torch.randn(d, others, generator=g)], 1))
    c = a / float(rest.norm())
    rs = c * rest / rest.norm() + (1 - c * c) ** 0.5 * basis[:, 2:].T   # [others, d]: unit, . direction = 0
    codes = torch.cat([direction[None], rs])
    sae = StandardSAE(StandardSAEConfig(d_in=d, d_sae=others + 1, apply_b_dec_to_input=False))
    with torch.no_grad():
        sae.W_enc.copy_(codes.T)
        sae.W_dec.copy_(1.5 * codes)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae, rs


def test_a_planted_latent_flips_the_first_word_and_matched_random_latents_do_not(loaded_models, images):
    """An SAE whose latent 0 carries the direction that decides between the two tokens the tiny Gemma 3 ranks
    first and second for its first caption token, at the last decoder layer L, and 15 other latents that match it
    in decoder norm and in activation at that position, with directions orthogonal to it.

    Construction: the first token is argmax of lm_head(norm(x)) at the last prompt position, x = output of layer
    L (nothing but the final RMSNorm sits between them). With norm(x) = x / rms(x) * (1 + w) and unembedding rows
    E, logit[t1] - logit[t2] = (x . v) / rms(x) with v = (1 + w) * (E[t1] - E[t2]): its sign is the sign of x . v.
    Latent 0: encoder d = v / |v| (h_0 = relu(x . d) = a > 0 since t1 wins), decoder 1.5 d. Ablating it (residual
    hook, scale 0) gives x' = x - 1.5 a d, so x' . v = -0.5 x . v: the margin changes sign and t1 is no longer
    written. Latents 1..15: unit directions r orthogonal to d with x . r = a (a multiple of x's part orthogonal to
    d plus a random part orthogonal to both), decoder 1.5 r: each fires exactly as much as latent 0 and its
    ablation removes a vector of the same norm 1.5 a, but x' . v = x . v, so the margin keeps its sign. Controls:
    every single other latent (k = 1, as the targeted set) and 10 seeded sets of k = 3 (removing sqrt(3) times as
    much); none changes the first token. With positions="generated" the first token is predicted at the last
    prompt position, which is not edited, so it stays; amplifying the latent (scale 3) keeps it too."""

    lm = loaded_models("gemma3")
    model = lm.model
    layer = lm.num_layers - 1
    inputs = generation_inputs(lm, images[:1], PROMPT)
    captured = []
    handle = decoder_layers(model)[layer].register_forward_hook(lambda _m, _a, out: captured.append(out))
    try:
        logits = last_logits(lm, inputs)[0]
    finally:
        handle.remove()
    x = captured[0][0, -1].float()
    t1, t2 = (int(t) for t in logits.topk(2).indices)
    base = generate_ids(lm, images[:1], PROMPT, max_new_tokens=NEW)[0]
    assert base[0] == t1

    with torch.no_grad():
        unembed = model.get_output_embeddings().weight.float()
        v = (1 + model.get_decoder().norm.weight.float()) * (unembed[t1] - unembed[t2])
        direction = v / v.norm()
        a = float(x @ direction)
        assert a > 0                                            # the premise: sign(margin) = sign(x . v)
        sae, others = planted_sae(direction, x)
        acts = sae.encode(x)
    torch.testing.assert_close(acts, torch.full((16,), a), rtol=1e-4, atol=1e-5)   # all fire, equally
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.full((16,), 1.5))
    assert float((others @ direction).abs().max()) < 1e-5

    def margin(latents, **options):
        with latent_hooks(model, {layer: (sae, latents)}, **options) as hooks:
            out = last_logits(lm, inputs)[0]
            first = generate_ids(lm, images[:1], PROMPT, max_new_tokens=NEW, hooks=hooks)[0][0]
        return float(out[t1] - out[t2]), int(out.argmax()), first

    before = margin([])
    assert before[0] > 0 and before[1] == before[2] == t1
    flipped = margin([0])
    assert flipped[0] < 0 and flipped[1] != t1 and flipped[2] != t1
    assert abs(flipped[0] + 0.5 * before[0]) < 0.05 * before[0]       # x' . v = -0.5 x . v (rms barely moves)
    assert margin([0], scale=3.0)[1:] == (t1, t1)
    assert margin([0], positions="generated")[2] == t1
    controls = [[j] for j in range(1, 16)]
    controls += [(1 + torch.randperm(15, generator=torch.Generator().manual_seed(run))[:3]).tolist()
                 for run in range(10)]
    for latents in controls:
        kept = margin(latents)
        assert kept[0] > 0 and kept[1:] == (t1, t1), latents


def test_a_planted_latent_is_found_by_the_statistics_and_matched_random_latents_are_not(loaded_models, fixture_dir):
    """The planted case at the level of the published table: generation with the hooks, counting with the gender
    lexicon and the statistics, as the stage runs them (generate_captions, count_captions, summarize).

    A copy of the tiny Gemma 3 whose output embedding row of the male word "he" is set to lambda * m, with m the
    unit mean of the final-normed last hidden states n(x_i) of the 12 fixture images, and lambda large enough that
    "he" is every image's first caption token (the prompt holds no "he", so every hidden state is unchanged). One
    new token per caption, so a caption is one word. As in the test above, logit[he] = x . v / rms(x) with
    v = (1 + w) * E[he]: the SAE's latent 0 has encoder d = v / |v| and decoder 1.5 d, so ablating it gives
    x' . v = -0.5 x . v < 0 on every image, and "he" is no longer written. The random runs ablate one of 15 other
    latents (unit directions orthogonal to d that fire as much as latent 0 on the first image): x . v is unchanged.
    Expected, from the construction alone: every baseline caption is "he" (one male word per image), no targeted
    caption has one (-100 %), no random run changes a count (0 %, std 0), every paired difference is -1, so the
    two-sided Wilcoxon p is 2 / 2^n (the smallest possible; scipy agrees) and the empirical p is 1 / (1 + runs)."""
    import pandas as pd
    from scipy.stats import wilcoxon

    from layerwise.intervention.counts import count_captions
    from layerwise.intervention.options import InterventionOptions
    from layerwise.intervention.stats import summarize

    lm = copy.deepcopy(loaded_models("gemma3"))
    model, tokenizer = lm.model, lm.processor.tokenizer
    layer = lm.num_layers - 1
    he = tokenizer("he", add_special_tokens=False).input_ids
    assert len(he) == 1
    he = he[0]
    images = [load_rgb(p) for p in sorted((fixture_dir / "data" / "images").glob("s*.png"))]
    inputs = generation_inputs(lm, images, PROMPT)
    assert he not in inputs["input_ids"].flatten().tolist(), "the prompt holds the token whose row changes"
    captured = []
    handle = decoder_layers(model)[layer].register_forward_hook(lambda _m, _a, out: captured.append(out))
    try:
        logits = last_logits(lm, inputs)
    finally:
        handle.remove()
    x = captured[0][:, -1].float()                                          # [n, d] at the last prompt position
    with torch.no_grad():
        gain = 1 + model.get_decoder().norm.weight.float()
        normed = x / x.pow(2).mean(dim=1, keepdim=True).sqrt() * gain
        m = normed.mean(dim=0)
        m = m / m.norm()
        assert (normed @ m > 0).all()
        lam = 4 * float(logits.abs().max()) / float((normed @ m).min())
        model.get_output_embeddings().weight[he] = lam * m
        v = gain * model.get_output_embeddings().weight[he].float()
        direction = v / v.norm()
        sae, _ = planted_sae(direction, x[0])
    assert (x @ direction > 0).all()                                     # latent 0 fires on every image

    options = InterventionOptions(layers=str(layer), k=1, runs=8, max_new_tokens=1, batch_size=4)
    conditions = [("baseline", 0, None), ("targeted", 0, [0])] + [("random", r, [1 + r]) for r in range(options.runs)]
    records = []
    for condition, run, latents in conditions:
        if latents is None:
            captions = generate_captions(lm, images, PROMPT, max_new_tokens=1, batch_size=options.batch_size)
        else:
            with latent_hooks(model, {layer: (sae, latents)}) as hooks:
                captions = generate_captions(lm, images, PROMPT, max_new_tokens=1, batch_size=options.batch_size,
                                             hooks=hooks)
            assert hooks.fired.get(layer), condition
        records += [{"sample_id": f"s{i}", "image": f"img{i}", "layers": str(layer), "feature_language": "english",
                     "caption_language": "english", "condition": condition, "run": run, "caption": caption}
                    for i, caption in enumerate(captions)]
    counted, _ = count_captions(pd.DataFrame.from_records(records))
    base = counted[counted.condition == "baseline"]
    assert base.caption.str.strip().eq("he").all() and base.male.eq(1).all(), base.caption.tolist()
    row = summarize(counted, model="gemma3", model_id="tiny", options=options).iloc[0]
    n = len(images)
    assert (row.base_count, row.targeted_count, row.change_pct) == (n, 0, -100.0)
    assert (row.random_mean, row.random_std, row.runs) == (0.0, 0.0, options.runs)
    assert row.specificity == 100.0 and row.mean_difference == -1.0
    assert row.wilcoxon_p == pytest.approx(2 / 2 ** n) == pytest.approx(wilcoxon(-np.ones(n)).pvalue)
    assert row.empirical_p == pytest.approx(1 / (1 + options.runs))
    assert row.ci_low == row.ci_high == -1.0
