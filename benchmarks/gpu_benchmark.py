#!/usr/bin/env python3
"""GPU benchmark of layerwise's extraction data path at full model size (random weights, no network).

    python3 benchmarks/gpu_benchmark.py                          # Gemma-3-4B, on a GPU machine, from the repo root
    python3 benchmarks/gpu_benchmark.py --model-type qwen2_vl    # another family at its full size
    python3 benchmarks/gpu_benchmark.py --smoke --model-type mllama   # the same code on the CPU: tiny architecture
    python3 benchmarks/gpu_benchmark.py --meta --model-type all  # full-size configs on the meta device: parameters

`--model-type` picks the family (layerwise.models.families): gemma3 (google/gemma-3-4b-it, the default),
paligemma (google/paligemma-3b-pt-224), qwen2_vl (Qwen/Qwen2-VL-7B-Instruct), qwen2_5_vl
(Qwen/Qwen2.5-VL-7B-Instruct), llava (llava-hf/llava-1.5-7b-hf), llava_next (llava-hf/llava-v1.6-mistral-7b-hf),
mllama (meta-llama/Llama-3.2-11B-Vision-Instruct), idefics3 (HuggingFaceM4/Idefics3-8B-Llama3), smolvlm
(HuggingFaceTB/SmolVLM2-2.2B-Instruct). The full architecture (configs embedded below, numbers from the
published config.json files) is built with random bf16 weights directly on the GPU. Inputs go through
layerwise's own encoding (`inputs.InputBuilder` on the family's own processor class with the real image
processor settings, so the image token count is the real one: 256 for Gemma 3 at 896 px and PaliGemma at
224 px, 576 for LLaVA-1.5 at 336 px, per image size for Qwen2-VL, LLaVA-NeXT, Idefics3 and SmolVLM, one
`<|image|>` for Mllama). There is no real tokenizer offline, so each processor uses the test fixture's tokenizer
of that family (tests/support: its special tokens, chat template and tokenizer kind, trained in a second on
English and Arabic captions); the model's token ids follow it. A synthetic samplesheet (JPEG images, 768 px for
Gemma 3 as before, 500x375 like Flickr8K's photos for the others; English and Arabic captions) is written to
the write folder.

Every byte goes through the new write-once path: positions planned up front
(`extract.plan_layout` -> `layerfile.UnitLayout`), one `layerfile.LayerFileStream` per layer and
language streaming rows straight into the final `.pt` in the write folder (`--write-dir`, default a
temp dir on the local disk), `extract.store_batch` per batch, a checkpoint (`state()`: fsync) every
`--checkpoint-interval` samples, `finish()`. Phases (each gets a share of `--budget-s`):

  disk      the write folder's ceilings: plain write+fsync, sha256, crc32, and PtFileWriter streaming
  bare      model.model(..., output_hidden_states=True) per language; where the family has a feature cache
            (`Family.feature_cache`: all but Mllama) the vision tower once per image and batch, one image per call
            (`images.per_image_features`, as the pipeline computes its cache), the features fed to both languages
            through mm_encoder_outputs; else inside every forward, as the pipeline runs it
  capture   capture.capture_layers (all layers) + run_until (early exit); nothing leaves the GPU
  extract   the engine's hot path: capture + store_batch -> LayerFileStream (all tokens by default)
  unit      extract.run_unit itself, once per language, sharing one image_cache where the family has one
            (vision tower once per image): preflight, plan_layout, image cache, input encoding, extraction,
            finish, summary

Figures: (a) the projected wall time of the seed job on one GPU (2000 samples x 2 languages x all the
family's decoder layers, all tokens, bf16) from the measured per-sample times, goal <= 10 min; (b)
capture+write throughput as a ratio of the bare forward over the same inputs, goal >= 0.8. The last line is
`BENCHMARK_JSON {...}` (also --json-out). `--meta` builds nothing on a device: it prints each family's
full-size parameter count against the published one and the tokens of one synthetic sample, last line
`META_JSON {...}`.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the repository's own layerwise
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # run_unit's progress bar would clutter the figures

# The seed job: 2000 samples x 2 languages x every decoder layer (34 for Gemma-3-4B, the family's own otherwise)
SEED_SAMPLES, SEED_LANGUAGES, SEED_LAYERS, GOAL_S, GOAL_RATIO = 2000, 2, 34, 600.0, 0.8
LANGS = ("english", "arabic")      # assets/prompts.json; the synthetic samplesheet has both captions
FINGERPRINT = "gpu-benchmark-random-init"

# google/gemma-3-4b-it: text and vision towers (token ids come from the processor's tokenizer).
GEMMA3_4B = {
    "name": "gemma-3-4b (random init)",
    "model_type": "gemma3", "hub": "google/gemma-3-4b-it", "display": "Gemma-3-4B",
    "text": dict(
        vocab_size=262_208, hidden_size=2560, intermediate_size=10_240, num_hidden_layers=34,
        num_attention_heads=8, num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256,
        sliding_window=1024, max_position_embeddings=131_072, rms_norm_eps=1e-6,
        hidden_activation="gelu_pytorch_tanh",
        layer_types=["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(34)],
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}},
    ),
    "vision": dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                   image_size=896, patch_size=14, layer_norm_eps=1e-6, vision_use_head=False),
    "mm_tokens_per_image": 256,
    "image_px": 768,                 # synthetic JPEGs (the processor resizes them to 896)
    "params": 4_300_079_472,
}


def tiny_spec() -> dict:
    """The test fixture's architecture (tests/fixtures/build/model): 6 layers, hidden 64, 64 px images."""
    from tests.support import fixtures

    return {"name": "tiny gemma 3 (fixture architecture, smoke)", "model_type": "gemma3", "hub": "google/gemma-3-4b-it",
            "display": "Gemma-3-4B",
            "text": dict(fixtures.TEXT, vocab_size=None),
            "vision": dict(fixtures.VISION), "mm_tokens_per_image": fixtures.MM_TOKENS_PER_IMAGE,
            "image_px": 0, "params": None}


# ------------------------------------------------------------------------------------ other families, full size
# The published checkpoints' numbers (config.json, preprocessor_config.json, processor_config.json), written out
# from the hub files as known offline: nothing can be downloaded here. "(unsure)" marks a value that could not
# be checked against the file; none of them changes a figure by more than a few percent (most are RoPE
# settings or position limits, which change no parameter and no FLOP). Token ids are never copied: they
# follow the processor's tokenizer (the test fixture's tokenizer of that family, tests/support/families.py:
# the family's special tokens, chat template and tokenizer kind, trained on English and Arabic captions), so
# text token counts differ a little from the real tokenizer's; image token counts are the real ones (real
# image-processor settings). Vocabulary sizes are the real ones (embedding and LM-head sizes).
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
HALF = [0.5, 0.5, 0.5]
BICUBIC, BILINEAR, LANCZOS = 3, 2, 1       # PIL resampling ids, as the hub preprocessor configs write them
FLICKR_PX = (500, 375)                     # Flickr8K's usual photo size (the researchers' data), width x height

# The checkpoint each full-size configuration copies (the family table's first example, except SmolVLM: its first
# example, HuggingFaceTB/SmolVLM-Instruct, is published as model_type idefics3 (unsure); SmolVLM2 is `smolvlm`).
HUB_IDS = {"smolvlm": "HuggingFaceTB/SmolVLM2-2.2B-Instruct"}

# Published parameter counts (the hub's safetensors total, in billions), the reference for --meta.
PUBLISHED_PARAMS_B = {
    "gemma3": 4.30,        # google/gemma-3-4b-it: 4,300,079,472 (checked: facts.md)
    "paligemma": 2.92,     # google/paligemma-3b-pt-224
    "qwen2_vl": 8.29,      # Qwen/Qwen2-VL-7B-Instruct
    "qwen2_5_vl": 8.29,    # Qwen/Qwen2.5-VL-7B-Instruct
    "llava": 7.06,         # llava-hf/llava-1.5-7b-hf
    "llava_next": 7.57,    # llava-hf/llava-v1.6-mistral-7b-hf
    "mllama": 10.67,       # meta-llama/Llama-3.2-11B-Vision-Instruct
    "idefics3": 8.46,      # HuggingFaceM4/Idefics3-8B-Llama3
    "smolvlm": 2.25,       # HuggingFaceTB/SmolVLM2-2.2B-Instruct (unsure: 2.2-2.25 B)
}


def _ids(tok, *tokens):
    from tests.support.families import _ids as ids

    return ids(tok, *tokens)


def _siglip_so400m(image_size: int, **extra) -> dict:
    """SigLIP so400m/14 (PaliGemma, Gemma 3, Idefics3, SmolVLM): 27 layers, width 1152, MLP 4304, 16 heads."""
    return dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                image_size=image_size, patch_size=14, layer_norm_eps=1e-6, **extra)


def _clip_l_336():
    """CLIP ViT-L/14 at 336 px (openai/clip-vit-large-patch14-336; LLaVA-1.5 and 1.6 vision_config)."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                            image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu",
                            layer_norm_eps=1e-5)


def paligemma_full(tiny):
    """google/paligemma-3b-pt-224: SigLIP so400m at 224 px (256 image tokens) + Gemma-2B (18 x 2048, MQA)."""
    from transformers import GemmaConfig, PaliGemmaConfig, PaliGemmaProcessor, SiglipImageProcessor, SiglipVisionConfig

    tok = tiny.tokenizer
    # preprocessor_config.json: SiglipImageProcessor 224x224, resample 3, mean/std 0.5, image_seq_length 256
    image_processor = SiglipImageProcessor(size={"height": 224, "width": 224}, resample=BICUBIC, image_mean=HALF,
                                           image_std=HALF, image_seq_length=256)
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tok)   # no chat template on the hub
    special = dict(pad_token_id=_ids(tok, "<pad>"), eos_token_id=_ids(tok, "<eos>"), bos_token_id=_ids(tok, "<bos>"))
    config = PaliGemmaConfig(
        # vision_config: hidden 1152, intermediate 4304, 27 layers, 16 heads, patch 14, vision_use_head false
        vision_config=SiglipVisionConfig(**_siglip_so400m(224), projection_dim=2048, vision_use_head=False),
        # text_config: hidden 2048, intermediate 16384, 18 layers, 8 heads, 1 KV head, vocab 257216; head_dim 256,
        # max_position_embeddings 8192 and the gelu_pytorch_tanh MLP are Gemma-2B's defaults (not in the file)
        text_config=GemmaConfig(vocab_size=257_216, hidden_size=2048, intermediate_size=16_384, num_hidden_layers=18,
                                num_attention_heads=8, num_key_value_heads=1, head_dim=256,
                                max_position_embeddings=8192, rms_norm_eps=1e-6,
                                hidden_activation="gelu_pytorch_tanh", **special),
        image_token_index=processor.image_token_id, vocab_size=257_216, projection_dim=2048, hidden_size=2048,
        **special)
    return processor, config


def _qwen_image_processors():
    """Qwen2-VL / Qwen2.5-VL preprocessor_config.json: min_pixels 3136 (56x56), max_pixels 12845056 (3584x3584),
    patch 14, temporal patch 2, merge 2 (one token per 28x28 pixels), CLIP mean/std, bicubic."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    common = dict(size={"shortest_edge": 3136, "longest_edge": 12_845_056}, patch_size=14, temporal_patch_size=2,
                  merge_size=2, image_mean=CLIP_MEAN, image_std=CLIP_STD, resample=BICUBIC)
    return Qwen2VLImageProcessor(**common), Qwen2VLVideoProcessor(**common)


def _qwen_text(tok, max_positions: int) -> dict:
    # Qwen2-VL-7B / Qwen2.5-VL-7B config.json: hidden 3584, intermediate 18944, 28 layers, 28 heads, 4 KV heads,
    # vocab 152064, rms eps 1e-6, rope_theta 1e6 with mrope_section [16, 24, 24], untied LM head
    return dict(vocab_size=152_064, hidden_size=3584, intermediate_size=18_944, num_hidden_layers=28,
                num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=max_positions,
                rms_norm_eps=1e-6, use_sliding_window=False, sliding_window=32_768, max_window_layers=28,
                rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1_000_000.0},
                bos_token_id=_ids(tok, "<|endoftext|>"), eos_token_id=_ids(tok, "<|im_end|>"),
                pad_token_id=_ids(tok, "<|endoftext|>"))


def _qwen_ids(tok) -> dict:
    image, video, start, end = _ids(tok, "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
    return dict(image_token_id=image, video_token_id=video, vision_start_token_id=start, vision_end_token_id=end)


def qwen2_vl_full(tiny):
    """Qwen/Qwen2-VL-7B-Instruct: 675M-parameter dynamic-resolution ViT (32 x 1280) + Qwen2-7B (28 x 3584)."""
    from transformers import Qwen2VLConfig, Qwen2VLProcessor

    image_processor, video_processor = _qwen_image_processors()
    processor = Qwen2VLProcessor(image_processor=image_processor, tokenizer=tiny.tokenizer,
                                 video_processor=video_processor, chat_template=tiny.chat_template)
    config = Qwen2VLConfig(
        text_config=_qwen_text(tiny.tokenizer, 32_768),
        # vision_config: depth 32, embed_dim 1280, mlp_ratio 4, 16 heads, hidden_size 3584 (merger output),
        # patch 14, spatial_merge_size 2, temporal_patch_size 2 (quick_gelu: the class default, as on the hub)
        vision_config=dict(depth=32, embed_dim=1280, hidden_size=3584, mlp_ratio=4, num_heads=16, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, hidden_act="quick_gelu"),
        tie_word_embeddings=False, **_qwen_ids(tiny.tokenizer))
    return processor, config


def qwen2_5_vl_full(tiny):
    """Qwen/Qwen2.5-VL-7B-Instruct: windowed ViT (32 x 1280, SwiGLU 3420, full attention in blocks 7/15/23/31)
    + Qwen2-7B-sized decoder (28 x 3584)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLProcessor

    image_processor, video_processor = _qwen_image_processors()
    processor = Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tiny.tokenizer,
                                    video_processor=video_processor, chat_template=tiny.chat_template)
    config = Qwen2_5_VLConfig(
        text_config=_qwen_text(tiny.tokenizer, 128_000),       # max_position_embeddings 128000 (unsure)
        vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                           fullatt_block_indexes=[7, 15, 23, 31], window_size=112, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, tokens_per_second=2, hidden_act="silu"),
        tie_word_embeddings=False, **_qwen_ids(tiny.tokenizer))
    return processor, config


def llava_full(tiny):
    """llava-hf/llava-1.5-7b-hf: CLIP ViT-L/14-336 (576 image tokens, CLS dropped) + Vicuna-7B (Llama 2, 32 x 4096)."""
    from transformers import CLIPImageProcessor, LlamaConfig, LlavaConfig, LlavaProcessor

    tok = tiny.tokenizer
    # preprocessor_config.json: CLIPImageProcessor, shortest_edge 336, center crop 336x336, bicubic, CLIP mean/std
    image_processor = CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                                         resample=BICUBIC, image_mean=CLIP_MEAN, image_std=CLIP_STD)
    # processor_config.json: patch_size 14, vision_feature_select_strategy default, num_additional_image_tokens 1
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=14,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               image_token="<image>", chat_template=tiny.chat_template)
    pad = _ids(tok, "<pad>")
    config = LlavaConfig(
        vision_config=_clip_l_336(),
        # text_config: vocab 32064, max_position_embeddings 4096, rms eps 1e-5; the rest is LlamaConfig's 7B
        # default (hidden 4096, intermediate 11008, 32 layers, 32 heads, no GQA, rope_theta 1e4), written out
        text_config=LlamaConfig(vocab_size=32_064, hidden_size=4096, intermediate_size=11_008, num_hidden_layers=32,
                                num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                                rms_norm_eps=1e-5, pad_token_id=pad, bos_token_id=_ids(tok, "<s>"),
                                eos_token_id=_ids(tok, "</s>")),
        image_token_index=_ids(tok, "<image>"), image_seq_length=576, vision_feature_layer=-2,
        vision_feature_select_strategy="default", projector_hidden_act="gelu", tie_word_embeddings=False,
        pad_token_id=pad)
    return processor, config


LLAVA_NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def llava_next_full(tiny):
    """llava-hf/llava-v1.6-mistral-7b-hf: CLIP ViT-L/14-336 on a base view + any-resolution tiles + Mistral-7B."""
    from transformers import LlavaNextConfig, LlavaNextImageProcessor, LlavaNextProcessor, MistralConfig

    tok = tiny.tokenizer
    image_processor = LlavaNextImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                                              image_grid_pinpoints=LLAVA_NEXT_PINPOINTS, resample=BICUBIC,
                                              image_mean=CLIP_MEAN, image_std=CLIP_STD)
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tok, patch_size=14,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                   image_token="<image>", chat_template=tiny.chat_template)
    pad = _ids(tok, "<pad>")
    config = LlavaNextConfig(
        vision_config=_clip_l_336(),
        # text_config (Mistral-7B-Instruct-v0.2): vocab 32064, hidden 4096, intermediate 14336, 32 layers, 32 heads,
        # 8 KV heads, rope_theta 1e6, max_position_embeddings 32768, no sliding window
        text_config=MistralConfig(vocab_size=32_064, hidden_size=4096, intermediate_size=14_336, num_hidden_layers=32,
                                  num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                                  max_position_embeddings=32_768, rms_norm_eps=1e-5, sliding_window=None,
                                  rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
                                  pad_token_id=pad, bos_token_id=_ids(tok, "<s>"), eos_token_id=_ids(tok, "</s>")),
        image_token_index=_ids(tok, "<image>"), image_grid_pinpoints=LLAVA_NEXT_PINPOINTS, image_seq_length=576,
        vision_feature_layer=-2, vision_feature_select_strategy="default", projector_hidden_act="gelu",
        tie_word_embeddings=False, pad_token_id=pad)
    return processor, config


def mllama_full(tiny):
    """meta-llama/Llama-3.2-11B-Vision-Instruct: tiled ViT-H (32 + 8 global layers x 1280, 560 px tiles, up to 4)
    read by 8 cross-attention layers inside a 40-layer Llama 3.1-8B-sized decoder."""
    from transformers import MllamaConfig, MllamaImageProcessor, MllamaProcessor, MllamaTextConfig, MllamaVisionConfig

    tok = tiny.tokenizer
    # preprocessor_config.json: 560x560 tiles, max_image_tiles 4, resample 2 (bilinear), CLIP mean/std, do_pad
    image_processor = MllamaImageProcessor(size={"height": 560, "width": 560}, max_image_tiles=4, resample=BILINEAR,
                                           image_mean=CLIP_MEAN, image_std=CLIP_STD)
    processor = MllamaProcessor(image_processor=image_processor, tokenizer=tok, chat_template=tiny.chat_template)
    config = MllamaConfig(
        # vision_config: hidden 1280, intermediate 5120, 32 layers + 8 global layers, 16 heads, 560 px, patch 14,
        # max_num_tiles 4, intermediate_layers_indices [3, 7, 15, 23, 30], vision_output_dim 7680 (1280 x 6)
        vision_config=MllamaVisionConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                                         num_global_layers=8, attention_heads=16, image_size=560, patch_size=14,
                                         max_num_tiles=4, intermediate_layers_indices=[3, 7, 15, 23, 30],
                                         vision_output_dim=7680, norm_eps=1e-5),
        # text_config: vocab 128256 (+8 rows in the embedding), hidden 4096, intermediate 14336, 40 layers, 32 heads,
        # 8 KV heads, cross-attention layers 3, 8, ..., 38, rope llama3 (factor 8, low 1, high 4, original 8192,
        # theta 5e5), max_position_embeddings 131072, untied LM head
        text_config=MllamaTextConfig(vocab_size=128_256, hidden_size=4096, intermediate_size=14_336,
                                     num_hidden_layers=40, num_attention_heads=32, num_key_value_heads=8,
                                     cross_attention_layers=[3, 8, 13, 18, 23, 28, 33, 38],
                                     max_position_embeddings=131_072, rms_norm_eps=1e-5, tie_word_embeddings=False,
                                     rope_parameters={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                      "high_freq_factor": 4.0,
                                                      "original_max_position_embeddings": 8192,
                                                      "rope_theta": 500_000.0},
                                     bos_token_id=_ids(tok, "<|begin_of_text|>"),
                                     eos_token_id=list(_ids(tok, "<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")),
                                     pad_token_id=_ids(tok, "<|finetune_right_pad_id|>")),
        image_token_index=_ids(tok, "<|image|>"))
    return processor, config


def idefics3_full(tiny):
    """HuggingFaceM4/Idefics3-8B-Llama3: SigLIP so400m on 364 px tiles (169 tokens each after a 2x2 pixel
    shuffle; up to 4x4 tiles + a global view) + Llama-3.1-8B (32 x 4096)."""
    from transformers import (
        Idefics3Config,
        Idefics3ImageProcessor,
        Idefics3Processor,
        Idefics3VisionConfig,
        LlamaConfig,
    )

    tok = tiny.tokenizer
    # preprocessor_config.json: size longest_edge 1456 (4 x 364), max_image_size longest_edge 364, resample 1
    # (lanczos), mean/std 0.5, do_image_splitting; processor image_seq_len 169
    image_processor = Idefics3ImageProcessor(size={"longest_edge": 4 * 364}, max_image_size={"longest_edge": 364},
                                             resample=LANCZOS, image_mean=HALF, image_std=HALF)
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tok, image_seq_len=169,
                                  chat_template=tiny.chat_template)
    pad = _ids(tok, "<|reserved_special_token_0|>")
    config = Idefics3Config(
        vision_config=Idefics3VisionConfig(**_siglip_so400m(364)),
        # text_config: vocab 128259, hidden 4096, intermediate 14336, 32 layers, 32 heads, 8 KV heads;
        # rope_theta 5e5 and max_position_embeddings 131072 (unsure: Llama 3.1's values; llama3 RoPE scaling not set)
        text_config=LlamaConfig(vocab_size=128_259, hidden_size=4096, intermediate_size=14_336, num_hidden_layers=32,
                                num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131_072,
                                rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 500_000.0},
                                pad_token_id=pad, bos_token_id=_ids(tok, "<|begin_of_text|>"),
                                eos_token_id=_ids(tok, "<end_of_utterance>"), tie_word_embeddings=False),
        image_token_id=_ids(tok, "<image>"), scale_factor=2, tie_word_embeddings=False, pad_token_id=pad)
    return processor, config


def smolvlm_full(tiny):
    """HuggingFaceTB/SmolVLM2-2.2B-Instruct: SigLIP so400m on 384 px tiles (81 tokens each after a 3x3 pixel
    shuffle) + SmolLM2-1.7B (24 x 2048). Less sure than the others: see the (unsure) marks."""
    from transformers import (
        LlamaConfig,
        SmolVLMConfig,
        SmolVLMImageProcessor,
        SmolVLMProcessor,
        SmolVLMVideoProcessor,
        SmolVLMVisionConfig,
    )

    tok = tiny.tokenizer
    # preprocessor_config.json: size longest_edge 1536 (4 x 384), max_image_size longest_edge 384, lanczos, 0.5;
    # processor image_seq_len 81 ((384 // 14) ** 2 / 3 ** 2)
    common = dict(size={"longest_edge": 4 * 384}, max_image_size={"longest_edge": 384}, resample=LANCZOS,
                  image_mean=HALF, image_std=HALF)
    processor = SmolVLMProcessor(image_processor=SmolVLMImageProcessor(**common), tokenizer=tok,
                                 video_processor=SmolVLMVideoProcessor(**common), image_seq_len=81,
                                 chat_template=tiny.chat_template)
    pad = _ids(tok, "<|im_end|>")
    config = SmolVLMConfig(
        vision_config=SmolVLMVisionConfig(**_siglip_so400m(384)),
        # text_config: vocab 49280, hidden 2048, intermediate 8192, 24 layers, 32 heads, 32 KV heads;
        # rope_theta 273768 and max_position_embeddings 16384 (unsure), untied LM head (unsure)
        text_config=LlamaConfig(vocab_size=49_280, hidden_size=2048, intermediate_size=8192, num_hidden_layers=24,
                                num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=16_384,
                                rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 273_768.0},
                                pad_token_id=pad, bos_token_id=_ids(tok, "<|im_start|>"),
                                eos_token_id=_ids(tok, "<end_of_utterance>"), tie_word_embeddings=False),
        image_token_id=_ids(tok, "<image>"), scale_factor=3, tie_word_embeddings=False, pad_token_id=pad)
    return processor, config


FAMILY_NAMES = ("gemma3", "paligemma", "qwen2_vl", "qwen2_5_vl", "llava", "llava_next", "mllama", "idefics3",
                "smolvlm")   # the keys of layerwise.models.families.FAMILIES (checked by the test)
FULL_BUILDERS = {
    "paligemma": paligemma_full, "qwen2_vl": qwen2_vl_full, "qwen2_5_vl": qwen2_5_vl_full, "llava": llava_full,
    "llava_next": llava_next_full, "mllama": mllama_full, "idefics3": idefics3_full, "smolvlm": smolvlm_full,
}


def family_spec(model_type: str, smoke: bool) -> dict:
    """What is benchmarked: name, hub id, synthetic image size, expected parameters (exact for Gemma 3)."""
    if model_type == "gemma3":
        return tiny_spec() if smoke else dict(GEMMA3_4B)
    from layerwise.models.families import family_of

    hub = HUB_IDS.get(model_type) or family_of(model_type, "--model-type").examples[0]
    return {"name": f"tiny {model_type} (fixture architecture, smoke)" if smoke else f"{hub.split('/')[-1]} (random init)",
            "model_type": model_type, "hub": hub, "display": hub.split("/")[-1], "image_px": 0 if smoke else FLICKR_PX,
            "params": None}


def make_setup(spec: dict, smoke: bool):
    """(processor, config) of the family: Gemma 3 as before; the others from the test fixture's processor of that
    family (tiny, for --smoke) or its tokenizer and chat template with the real image processor and config."""
    model_type = spec["model_type"]
    if model_type == "gemma3":
        processor = make_processor(spec)
        return processor, make_config(spec, processor.tokenizer)
    from tests.support import families as fixture_families

    tiny, tiny_model = fixture_families.BUILDERS[model_type]()   # a tokenizer trained in a second + a tiny model
    if smoke:
        processor, config = tiny, tiny_model.config
    else:
        processor, config = FULL_BUILDERS[model_type](tiny)
    del tiny_model
    processor.tokenizer.padding_side = "right"       # as load_model sets it
    return processor, config


def say(line: str = "") -> None:
    print(line, flush=True)


def human(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


# ------------------------------------------------------------------------------------ model + processor
def make_processor(spec: dict):
    """Gemma3Processor: the fixture tokenizer (right padding, as load_model sets) + Gemma 3's image processor."""
    from transformers import Gemma3Processor

    from tests.support import fixtures

    tokenizer = fixtures.make_tokenizer()
    tokenizer.padding_side = "right"
    size = spec["vision"]["image_size"]
    kwargs = dict(size={"height": size, "width": size}, image_mean=[0.5] * 3, image_std=[0.5] * 3,
                  do_pan_and_scan=False)
    try:  # what AutoProcessor picks for google/gemma-3-4b-it: the torchvision backend where installed
        import torchvision  # noqa: F401
        from transformers import Gemma3ImageProcessor as ImageProcessor
    except ImportError:
        try:
            from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil as ImageProcessor
        except ImportError:
            from transformers import Gemma3ImageProcessor as ImageProcessor
    image_processor = ImageProcessor(**kwargs)
    return Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer, chat_template=fixtures.CHAT_TEMPLATE,
                           image_seq_length=spec["mm_tokens_per_image"])


def rope_summary_of(rope: dict) -> str:
    full, local = rope.get("full_attention", {}), rope.get("sliding_attention", {})
    return (f"global {full.get('rope_type')} x{full.get('factor', 1.0):g} theta {full.get('rope_theta', 0):g}, "
            f"local {local.get('rope_type')} theta {local.get('rope_theta', 0):g}")


def rope_summary(text_config) -> str:
    rope = getattr(text_config, "rope_parameters", None)
    if isinstance(rope, dict) and "full_attention" in rope:
        return rope_summary_of(rope)
    scaling = getattr(text_config, "rope_scaling", None) or {}
    return rope_summary_of({"full_attention": {"rope_type": scaling.get("rope_type", "default"),
                                               "factor": scaling.get("factor", 1.0),
                                               "rope_theta": getattr(text_config, "rope_theta", 0)},
                            "sliding_attention": {"rope_type": "default",
                                                  "rope_theta": getattr(text_config, "rope_local_base_freq", 0)}})


def make_config(spec: dict, tokenizer):
    from transformers import Gemma3Config, Gemma3TextConfig, SiglipVisionConfig

    ids = tokenizer.convert_tokens_to_ids
    eos = [tokenizer.eos_token_id, ids("<end_of_turn>")]
    kwargs = dict(spec["text"])
    kwargs["vocab_size"] = kwargs.get("vocab_size") or len(tokenizer)
    common = dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=eos, bos_token_id=tokenizer.bos_token_id)
    try:  # transformers 5.x: RoPE per layer type
        text = Gemma3TextConfig(**common, **kwargs)
    except (TypeError, ValueError):
        text = None
    if text is None or rope_summary(text) != rope_summary_of(kwargs["rope_parameters"]):
        rope = kwargs.pop("rope_parameters")  # older releases: rope_theta / rope_local_base_freq / rope_scaling
        full, local = rope["full_attention"], rope["sliding_attention"]
        text = Gemma3TextConfig(**common, rope_theta=full["rope_theta"], rope_local_base_freq=local["rope_theta"],
                                rope_scaling={"rope_type": full["rope_type"], "factor": full["factor"]}, **kwargs)
    return Gemma3Config(text_config=text, vision_config=SiglipVisionConfig(**spec["vision"]),
                        mm_tokens_per_image=spec["mm_tokens_per_image"], boi_token_index=ids("<start_of_image>"),
                        eoi_token_index=ids("<end_of_image>"), image_token_index=ids("<image_soft_token>"), **common)


def build_model(config, spec: dict, device, dtype, attn: str | None):
    """Random-init model of the family's class (`Family.architecture`) built directly on `device` in `dtype`
    (`meta`: shapes only, no memory)."""
    import torch
    import transformers

    from layerwise.models.families import family_of

    cls = getattr(transformers, family_of(spec["model_type"]).architecture)
    kwargs = {"attn_implementation": attn} if attn else {}
    torch.manual_seed(0)
    with torch.device(device):
        model = cls._from_config(config, dtype=dtype, **kwargs)
    model.eval().requires_grad_(False)
    if torch.device(device).type == "meta":
        return model
    with torch.no_grad():
        if spec["model_type"] == "gemma3":
            # transformers zero-initialises the projector: randomise it or every image feature is 0.
            model.model.multi_modal_projector.mm_input_projection_weight.normal_(
                0.0, spec["vision"]["hidden_size"] ** -0.5)
        else:
            # as the fixtures do: zero-initialised matrices and gates that trained checkpoints never leave at zero
            # (Mllama's cross-attention gates: tanh(0) = 0 would keep the image out of the text entirely)
            from tests.support.families import _randomise_zero_weights

            spec["randomised_zero_weights"] = len(_randomise_zero_weights(model))
    return model


def parameter_breakdown(model, model_type: str) -> dict:
    """Parameters in total and by part: vision encoder, language model (decoder + embeddings), LM head, the rest
    (projector / connector / merger outside the vision module). Tied weights count once."""
    from layerwise.extract.images import vision_tower
    from layerwise.models.families import family_of

    def ids(module) -> dict:
        return {id(q): q.numel() for q in module.parameters()} if module is not None else {}

    every = ids(model)
    vision = ids(vision_tower(model, family_of(model_type).vision_module))
    language = ids(model.get_decoder())
    head = {k: v for k, v in ids(model.get_output_embeddings()).items() if k not in language}
    total = sum(every.values())
    parts = {"vision": sum(vision.values()), "language": sum(language.values()), "lm_head": sum(head.values())}
    return {"total": total, **parts, "other": total - sum(parts.values())}


# ------------------------------------------------------------------------------------ data
def image_wh(image_px) -> tuple[int, int] | None:
    """(width, height) of the synthetic JPEGs: an int is a square, 0 means the fixture's PNG drawings (None)."""
    if not image_px:
        return None
    return (image_px, image_px) if isinstance(image_px, int) else (int(image_px[0]), int(image_px[1]))


def synthetic_image(rng, width: int, height: int):
    """A smooth random RGB picture with some noise (decoding and resizing it costs about what a photo does)."""
    import numpy as np
    from PIL import Image

    coarse = rng.integers(0, 256, (max(1, height // 16), max(1, width // 16), 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((width, height), Image.BILINEAR)
    noise = rng.integers(-12, 13, (height, width, 3))
    return Image.fromarray(np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8))


def build_dataset(out_dir: Path, n: int, image_px) -> Path:
    """samples.csv (sample_id,image,gender,caption_english,caption_arabic) + images; returns the CSV.

    image_px 0: the fixture's small PNG drawings; otherwise smooth random JPEGs of image_px x image_px
    (an int) or width x height (a pair)."""
    import csv

    import numpy as np

    from layerwise.core import schema
    from tests.support import fixtures

    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(fixtures.SEED)
    size = image_wh(image_px)
    path = out_dir / "samples.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([schema.SAMPLE_ID, schema.IMAGE, schema.GENDER,
                         schema.caption_column("english"), schema.caption_column("arabic")])
        for i, gender in enumerate(fixtures.genders(n)):
            if size:
                name = f"images/s{i:05d}.jpg"
                img = synthetic_image(rng, *size)
                img.save(out_dir / name, format="JPEG", quality=90)
            else:
                name = f"images/s{i:05d}.png"
                fixtures.draw_image(i).save(out_dir / name, format="PNG")
            writer.writerow([f"s{i:05d}", name, gender, *fixtures.captions(i, gender)])
    return path


class Data:
    """Samples, prompts and pre-encoded batches (CPU) of both languages. For a family with a feature cache the
    decoded images are kept once per batch (the vision tower runs once per image, one image per call, as
    `images.per_image_features` does in the pipeline) and the batch's pixel_values apart (the plain pass of the
    compute-diet check); each language's batch keeps the other processor outputs (token_type_ids, image_grid_thw,
    image_sizes, pixel_attention_mask, ...), as the pipeline feeds them with the cached features. For the others
    each language's batch keeps every processor output (pixel_values, cross_attention_mask, ...)."""

    def __init__(self, processor, family, samplesheet: Path, n: int, batch_size: int, dtype):
        import torch

        from layerwise.core.prompts import load_prompts, prompt_for
        from layerwise.core.sheet import iter_samples
        from layerwise.models.inputs import InputBuilder, load_rgb
        from layerwise.models.token_kinds import TokenKinds
        from layerwise.preflight.samplesheet import read_samplesheet

        self.family = family
        self.builder, self.kinds = InputBuilder(processor, family), TokenKinds(processor)
        table = read_samplesheet(samplesheet, list(LANGS), check_images=False)
        self.samples = list(iter_samples(table, None, f"0:{n}"))
        prompts = load_prompts(None, family.model_type)   # the family's own prompt where it has one (PaliGemma)
        self.prompts = {lang: prompt_for(lang, prompts) for lang in LANGS}
        self.batch_size = batch_size
        self.chunks = [self.samples[i:i + batch_size] for i in range(0, n, batch_size)]
        # [{"n": samples, "images": [PIL], "pixels": tensor (both feature-cache families only), lang: EncodedBatch}]
        self.batches: list[dict] = []
        for chunk in self.chunks:
            images = [load_rgb(s.image) for s in chunk]
            entry = {"n": len(chunk)}
            for lang in LANGS:
                b = self.builder.encode(images, [self.prompts[lang]] * len(chunk), [s.captions[lang] for s in chunk],
                                        torch.device("cpu"), dtype)
                if family.feature_cache:
                    pixels = b.inputs.pop("pixel_values")
                    entry.setdefault("pixels", pixels)
                    entry["images"] = images
                entry[lang] = b
            self.batches.append(entry)
        self.tokens = {lang: int(sum(int(e[lang].attention_mask.sum()) for e in self.batches)) for lang in LANGS}
        self.image_tokens = {lang: int(sum(int(e[lang].image_mask.sum()) for e in self.batches)) for lang in LANGS}

    def layout(self, lang: str, selection: str, n: int):
        """extract.plan_layout for the first n samples, checked against the encoded batches."""
        import torch

        from layerwise.extract.unit import plan_layout
        from layerwise.models.inputs import selection_mask

        plan = plan_layout(self.builder, self.kinds, self.samples[:n], self.prompts[lang], lang, selection)
        if selection != "mean":
            i = 0
            for e in self.batches:
                b = e[lang]
                keep = selection_mask(b, selection)
                for row in range(b.input_ids.shape[0]):
                    if i < n and not torch.equal(b.input_ids[row][keep[row]].to(torch.int64), plan.token_ids[i]):
                        raise RuntimeError(f"sample {i}: encoded tokens differ from plan_layout's")
                    i += 1
        return plan


# ------------------------------------------------------------------------------------ writers
class TimedWriter:
    """Passes append() to a LayerFileStream and adds up its time (sha256 + crc32 + write syscalls)."""

    __slots__ = ("w", "seconds")

    def __init__(self, w):
        self.w, self.seconds = w, 0.0

    def append(self, rows, nan_count: int = 0) -> None:
        t0 = time.perf_counter()
        self.w.append(rows, nan_count)
        self.seconds += time.perf_counter() - t0


class NullWriter:
    def append(self, rows, nan_count: int = 0) -> None:
        pass


def disk_check(directory: Path, nbytes: int) -> dict:
    """Ceilings of the write folder: plain write+fsync, sha256, crc32, PtFileWriter (all single-threaded)."""
    import torch

    from layerwise.layerfile.ptfile import PtFileWriter, TensorSlot

    chunk_bytes = min(64 << 20, nbytes)
    chunk = torch.randn(chunk_bytes // 2).to(torch.bfloat16)
    view = chunk.view(torch.uint8).numpy().data
    reps = max(1, nbytes // chunk_bytes)
    total = reps * chunk_bytes
    res = {"bytes": total}
    path = directory / "disk_check.bin"
    t0 = time.perf_counter()
    with open(path, "wb", buffering=0) as fh:
        for _ in range(reps):
            fh.write(view)
        os.fsync(fh.fileno())
    res["write_fsync_Bps"] = total / (time.perf_counter() - t0)
    path.unlink()
    t0 = time.perf_counter()
    h = hashlib.sha256()
    for _ in range(reps):
        h.update(view)
    res["sha256_Bps"] = total / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    crc = 0
    for _ in range(reps):
        crc = zlib.crc32(view, crc)
    res["crc32_Bps"] = total / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    w = PtFileWriter(directory / "disk_check.pt", {"activations": TensorSlot([total // 2], torch.bfloat16)},
                     ["activations"])
    for _ in range(reps):
        w.write(chunk)
    w.finish()
    res["ptfile_Bps"] = total / (time.perf_counter() - t0)
    (directory / "disk_check.pt").unlink()
    return res


# ------------------------------------------------------------------------------------ bench
class ForwardImageCount:
    """Images through the vision tower of a family without a feature cache: one per sample and forward (counted by
    `Bench._count_forward`), from when this counter was made."""

    def __init__(self, bench):
        self.bench, self.start = bench, bench.forward_images

    @property
    def images(self) -> int:
        return self.bench.forward_images - self.start

    def close(self) -> None:
        pass


class Bench:
    def __init__(self, args, spec, model, processor, device, dtype, work: Path, data: Data):
        import inspect
        from types import SimpleNamespace

        import torch

        from layerwise.models.capture import decoder_layers
        from layerwise.models.families import family_of

        self.args, self.spec, self.model, self.processor = args, spec, model, processor
        self.device, self.dtype, self.work, self.data = device, dtype, work, data
        self.family = family_of(model.config.model_type)
        # A feature-cache family: the vision tower once per image, one image per call (the pipeline's image cache,
        # `images.per_image_features`); Mllama runs it inside every forward (no feature cache), so here too
        self.cache = self.family.feature_cache
        # what layerwise.extract.images takes of a LoadedModel
        self.loaded = SimpleNamespace(model=model, processor=processor, family=self.family, device=device, dtype=dtype)
        self.cuda = device.type == "cuda"
        self.num_layers = len(decoder_layers(model))
        self.layers = list(range(self.num_layers))
        self.hidden = int(model.config.get_text_config().hidden_size)
        self.row_bytes = self.hidden * torch.empty((), dtype=dtype).element_size()
        if not self.cache:
            self.diet_path = "none (no feature cache for this family: the vision tower runs inside every forward)"
        elif "mm_encoder_outputs" in inspect.signature(model.model.forward).parameters:
            self.diet_path = "mm_encoder_outputs"
        else:
            self.diet_path = "patched get_image_features"
        self._returns_output = None   # patched path: get_image_features returns an output object (else a tensor)
        self.forward_images = 0    # images through the vision tower inside forwards (families without a cache)

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    # -- one forward (the vision tower once per image, as the shared image cache gives it) ----------------
    def image_features(self, images) -> dict:
        """`mm_encoder_outputs` of a batch's images: layerwise's own `images.per_image_features` (the image
        processor and the family's `get_image_features` on one image at a time, as the pipeline fills its cache)."""
        from layerwise.extract.images import per_image_features

        return per_image_features(self.loaded, images)

    def pixels_and_features(self, e) -> tuple:
        """(pixels on the device, features of the vision tower run once per image) of a feature-cache family;
        (None, None) for the others, whose batches carry their own pixel inputs."""
        if not self.cache:
            return None, None
        pixels = e["pixels"].to(self.device, non_blocking=True) if self.diet_path != "mm_encoder_outputs" else None
        return pixels, self.image_features(e["images"])

    def model_inputs(self, b, pixels, features) -> dict:
        """The batch's inputs on the device; a feature-cache family gets the cached features (mm_encoder_outputs)
        or, for the plain pass and the patched path, the pixels; the others keep their own pixel inputs."""
        inputs = {k: v.to(self.device, non_blocking=True) for k, v in b.inputs.items()}
        if not self.cache:
            pass
        elif features is None or self.diet_path != "mm_encoder_outputs":
            inputs["pixel_values"] = pixels
        else:
            inputs["mm_encoder_outputs"] = features
        return inputs

    def _patched(self, features):
        """Older transformers without mm_encoder_outputs: the vision call returns the cached features."""
        from contextlib import contextmanager

        from transformers.modeling_outputs import BaseModelOutputWithPooling

        @contextmanager
        def ctx():
            if features is None or self.diet_path == "mm_encoder_outputs":
                yield
                return
            restore = self.model.model.get_image_features
            out = features["image"]

            def cached(*_a, **k):
                if k.get("return_dict") or self._returns_output is not False:
                    return BaseModelOutputWithPooling(pooler_output=out.pooler_output)
                return out.pooler_output

            self.model.model.get_image_features = cached
            try:
                yield
            finally:
                self.model.model.get_image_features = restore
        return ctx()

    def _count_forward(self, inputs: dict) -> None:
        if not self.cache and "pixel_values" in inputs:
            self.forward_images += int(inputs["input_ids"].shape[0])   # one image per sample

    def vision_counter(self):
        """Counts images through the vision tower: the pipeline's own hook on it for a feature-cache family
        (`images.vision_counter`: one image per call, or per row of a fixed-size pixel tensor), else the forwards'
        samples (Mllama's tower takes all tiles of a batch in one tensor)."""
        from layerwise.extract.images import vision_counter

        if self.cache:
            return vision_counter(self.loaded)
        return ForwardImageCount(self)

    def forward_capture(self, inputs: dict, features) -> dict:
        import torch

        from layerwise.models.capture import capture_layers, run_until

        self._count_forward(inputs)
        with self._patched(features), torch.inference_mode(), capture_layers(self.model, self.layers) as captured:
            run_until(self.model, **inputs)
        return dict(captured)

    def forward_bare(self, inputs: dict, features) -> None:
        import torch

        self._count_forward(inputs)
        with self._patched(features), torch.inference_mode():
            self.model.model(**inputs, output_hidden_states=True, use_cache=False)

    def check_diet(self) -> float | None:
        """Max |plain - reused features| over every captured layer of batch 0 (should be ~0); None without a cache."""
        if not self.cache:
            return None
        import torch

        e = self.data.batches[0]
        pixels = e["pixels"].to(self.device)
        b = e[LANGS[0]]
        plain = self.forward_capture(self.model_inputs(b, pixels, None), None)
        features = self.image_features(e["images"])
        if self.diet_path != "mm_encoder_outputs":   # what the patched get_image_features must return
            from layerwise.extract.images import image_inputs

            with torch.inference_mode():
                probe = self.model.model.get_image_features(**image_inputs(self.loaded, e["images"][0]))
            self._returns_output = not isinstance(probe, torch.Tensor)
        diet = self.forward_capture(self.model_inputs(b, pixels, features), features)
        return max(float((plain[k].float() - diet[k].float()).abs().max()) for k in plain)

    # -- phases -----------------------------------------------------------------------------------
    def _peak_reset(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def _peak(self):
        if self.cuda:
            import torch

            return int(torch.cuda.max_memory_allocated())
        return None

    def run_forward_phase(self, name: str, share_s: float, deadline: float) -> dict:
        """bare / capture: every batch, both languages; nothing leaves the GPU."""
        batches = self.data.batches

        def one(e) -> None:
            pixels, features = self.pixels_and_features(e)
            for lang in LANGS:
                inputs = self.model_inputs(e[lang], pixels, features)
                if name == "bare":
                    self.forward_bare(inputs, features)
                else:
                    captured = self.forward_capture(inputs, features)
                    del captured
            self.sync()

        one(batches[0])   # warm-up (kernels, cuBLAS handles, allocator), not timed
        self._peak_reset()
        counter = self.vision_counter()
        started = time.perf_counter()
        limit = min(started + share_s, deadline)
        done, stopped = 0, None
        try:
            for e in batches:
                if time.perf_counter() > limit:
                    stopped = "budget"
                    break
                one(e)
                done += e["n"]
        finally:
            counter.close()
        seconds = time.perf_counter() - started
        tokens = sum(int(e[lang].attention_mask.sum()) for e in batches[:self._batches_for(done)] for lang in LANGS)
        return self._result(name, done, seconds, stopped, tokens=tokens, vision_tower_images=counter.images,
                            peak_gpu_memory_bytes=self._peak())

    def _batches_for(self, samples: int) -> int:
        return -(-samples // self.data.batch_size)

    def samples_that_fit(self, n: int, cap_bytes: float, languages: int) -> int:
        """Largest sample count (<= n, whole batches) whose layer files for `languages` languages fit in cap_bytes."""
        import torch

        from layerwise.models.inputs import selection_mask

        sel, bs = self.args.selection, self.data.batch_size
        lengths = {lang: torch.cat([selection_mask(e[lang], sel).sum(dim=1) for e in self.data.batches]).tolist()
                   for lang in LANGS}
        if sel == "mean":
            lengths = {lang: [1] * len(v) for lang, v in lengths.items()}

        def need(k: int) -> int:
            rows = [k * max(v[:k]) if self.args.layout == "padded" else sum(v[:k]) for v in lengths.values()]
            return max(rows) * languages * self.row_bytes * self.num_layers

        n = min(n, len(self.data.samples))
        while n > bs and need(n) > cap_bytes:
            n = max(bs, min(n - bs, int(n * cap_bytes / need(n)) // bs * bs))
        return n

    def run_extract(self, share_s: float, deadline: float) -> dict:
        """The engine's hot path: capture + store_batch -> LayerFileStream, checkpoints, finish."""
        from layerwise.core import schema
        from layerwise.extract.unit import store_batch
        from layerwise.layerfile.store import atomic_write_json
        from layerwise.layerfile.stream import LayerFileStream
        from layerwise.models.inputs import selection_mask

        args, sel = self.args, self.args.selection
        n = self.samples_that_fit(len(self.data.samples), self.cap_bytes, languages=len(LANGS))
        batches = self.data.batches[:self._batches_for(n)]
        plans = {lang: self.data.layout(lang, sel, n) for lang in LANGS}
        phase_dir = self.work / "extract"
        shutil.rmtree(phase_dir, ignore_errors=True)
        (phase_dir / ".partial").mkdir(parents=True)
        samples = self.data.samples[:n]
        meta = {"genders": [s.gender for s in samples], "sample_ids": [s.sample_id for s in samples],
                "token_selection": sel, "nan_policy": "zero", "model_id": self.spec["name"],
                "model_revision": "random", "num_layers": self.num_layers}
        streams = {lang: {layer: LayerFileStream(phase_dir / schema.layer_filename(layer, lang), plans[lang],
                                                 args.layout, self.hidden, self.dtype,
                                                 {**meta, "language": lang, "layer": layer})
                          for layer in self.layers} for lang in LANGS}
        timed = {lang: {layer: TimedWriter(w) for layer, w in ws.items()} for lang, ws in streams.items()}
        null = {layer: NullWriter() for layer in self.layers}
        expected_bytes = sum(w.writer.expected_bytes for ws in streams.values() for w in ws.values())
        times = dict(forward=0.0, store=0.0, commit=0.0)

        def one(e, start: int, writers) -> int:
            chunk = self.data.samples[start:start + e["n"]]
            ids = [s.sample_id for s in chunk]
            t0 = time.perf_counter()
            pixels, features = self.pixels_and_features(e)
            kept = 0
            for lang in LANGS:
                b = e[lang]
                captured = self.forward_capture(self.model_inputs(b, pixels, features), features)
                self.sync()
                t1 = time.perf_counter()
                times["forward"] += t1 - t0
                kept += store_batch(captured, selection_mask(b, sel), sel, "zero", ids,
                                    writers[lang] if writers else null)
                del captured
                t0 = time.perf_counter()
                times["store"] += t0 - t1
            return kept

        one(batches[0], 0, None)   # warm-up: the same gathers, NaN counts and copies, nothing written
        times.update(forward=0.0, store=0.0, commit=0.0)
        self._peak_reset()
        counter = self.vision_counter()
        started = time.perf_counter()
        limit = min(started + share_s, deadline)
        done = kept = commits = 0
        stopped, last_commit = None, 0
        try:
            for e in batches:
                if time.perf_counter() > limit:
                    stopped = "budget"
                    break
                kept += one(e, done, timed)
                done += e["n"]
                if done - last_commit >= args.checkpoint_interval and done < n:
                    t0 = time.perf_counter()   # Extractor._commit: state() fsyncs every file, then progress.json
                    state = {"fingerprint": FINGERPRINT, "done": done,
                             "writers": {f"{lang}/{layer}": w.state() for lang, ws in streams.items()
                                         for layer, w in ws.items()}}
                    atomic_write_json(phase_dir / ".partial" / "progress.json", state)
                    times["commit"] += time.perf_counter() - t0
                    last_commit, commits = done, commits + 1
        finally:
            counter.close()
        loop_s = time.perf_counter() - started
        finish_s, final_bytes, files, check = None, 0, 0, None
        nan_values = int(sum(sum(w.nan_counts) for ws in streams.values() for w in ws.values()))
        streamed = sum(w.writer.bytes_written for ws in streams.values() for w in ws.values())
        if stopped is None:
            t0 = time.perf_counter()
            for ws in streams.values():
                for w in ws.values():
                    final_bytes += w.finish()["bytes"]
                    files += 1
            finish_s = time.perf_counter() - t0
            check = self.check_file(phase_dir / schema.layer_filename(self.layers[-1], LANGS[-1]), plans[LANGS[-1]], n)
        else:
            for ws in streams.values():
                for w in ws.values():
                    w.abort()
        shutil.rmtree(phase_dir, ignore_errors=True)
        append_s = sum(w.seconds for ws in timed.values() for w in ws.values())
        tokens = sum(int(e[lang].attention_mask.sum()) for e in batches[:self._batches_for(done)] for lang in LANGS)
        rows = kept * self.row_bytes * self.num_layers
        total_s = loop_s + (finish_s or 0.0)
        res = self._result("extract", done, loop_s, stopped, tokens=tokens, positions_kept=kept,
                           vision_tower_images=counter.images, peak_gpu_memory_bytes=self._peak(),
                           planned_samples=n, forward_s=round(times["forward"], 3),
                           store_batch_s=round(times["store"], 3), append_s=round(append_s, 3),
                           gather_copy_s=round(times["store"] - append_s, 3), commit_s=round(times["commit"], 3),
                           checkpoints=commits, finish_s=None if finish_s is None else round(finish_s, 3),
                           total_s=round(total_s, 3), files=files, final_bytes=final_bytes,
                           expected_bytes=expected_bytes, row_bytes_written=rows, nan_values=nan_values,
                           bytes_written=final_bytes or streamed,
                           write_bytes_per_s=round((final_bytes or streamed) / total_s) if total_s else None,
                           file_check=check,
                           selection=sel, layout=args.layout)
        if done:
            res["projected_seed_job_s"] = round(SEED_SAMPLES * loop_s / done + (finish_s or 0.0), 1)
            res["projected_seed_job_bytes"] = int(expected_bytes * SEED_SAMPLES / n)
        return res

    def check_file(self, path: Path, plan, n: int) -> dict:
        import torch

        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        shape = list(data["activations"].shape)
        ok = (shape == plan.activation_shape(self.args.layout, self.hidden) and len(data["sample_ids"]) == n
              and data["lengths"].tolist() == plan.lengths and int(data["nan_counts"].sum()) == 0
              and bool(torch.isfinite(data["activations"][-1].float()).all()))
        return {"file": path.name, "activations": shape, "ok": bool(ok)}

    def run_units(self, share_s: float, deadline: float) -> dict:
        """extract.run_unit once per language (all layers), sharing one image_cache, as the pipeline does."""
        from layerwise.extract.unit import UnitConfig, preflight, run_unit
        from layerwise.models.loading import LoadedModel

        args = self.args
        model_dir = self.work / "model"
        self.model.config.save_pretrained(model_dir)          # preflight reads config.json only
        loaded = LoadedModel(self.model, self.processor, self.device, self.dtype, str(model_dir), "local",
                             self.num_layers, self.hidden, self.model.config.model_type)
        n = self.samples_that_fit(args.unit_samples, self.cap_bytes, languages=1)   # one unit's files at a time
        cache = self.work / "image_cache" if self.cache and self.diet_path == "mm_encoder_outputs" else None
        started = time.perf_counter()
        units, stopped = [], None
        self._peak_reset()
        for lang in LANGS:
            if time.perf_counter() > min(started + share_s, deadline) and units:
                stopped = "budget"
                break
            out = self.work / f"unit_{lang}"
            cfg = UnitConfig(samplesheet=str(self.data_csv), model=str(model_dir), language=lang, layers="all",
                             out_dir=str(out), rows=f"0:{n}", batch_size=args.batch_size,
                             checkpoint_interval=args.checkpoint_interval, dtype=str(self.dtype).removeprefix("torch."),
                             token_selection=args.selection, layout=args.layout, device=self.device.type,
                             image_cache=str(cache) if cache else None, model_fingerprint=FINGERPRINT)
            t0 = time.perf_counter()
            preflight(cfg)
            preflight_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            summary = run_unit(cfg, loaded=loaded)
            wall = time.perf_counter() - t0
            on_disk = sum(p.stat().st_size for p in out.glob("layer_*.pt"))
            fill = summary.get("image_features") or {}
            fill_s = float(fill.get("seconds", 0.0)) if not fill.get("cache_hit", True) else 0.0
            units.append({
                "language": lang, "samples": summary["samples"], "wall_s": round(wall, 3),
                "loop_s": summary["seconds"], "preflight_s": round(preflight_s, 3), "image_cache_fill_s": round(fill_s, 3),
                "other_s": round(wall - summary["seconds"] - preflight_s - fill_s, 3),
                "positions_kept": summary["positions_kept"], "bytes_written": summary["bytes_written"],
                "bytes_on_disk": on_disk, "files": len(summary["files"]),
                "vision_tower_images": summary["vision_tower_images"],
                "image_cache_hit": fill.get("cache_hit"), "nan_values": sum(summary["nan_counts"].values()),
            })
            shutil.rmtree(out, ignore_errors=True)
        if cache:
            shutil.rmtree(cache, ignore_errors=True)
        done = min((u["samples"] for u in units), default=0)
        wall = sum(u["wall_s"] for u in units)
        res = self._result("unit", done if len(units) == len(LANGS) else 0, wall, stopped,
                           positions_kept=sum(u["positions_kept"] for u in units),
                           vision_tower_images=sum(u["vision_tower_images"] for u in units),
                           peak_gpu_memory_bytes=self._peak(), units=units, image_cache=bool(cache),
                           final_bytes=sum(u["bytes_written"] for u in units), files=sum(u["files"] for u in units),
                           nan_values=sum(u["nan_values"] for u in units), selection=args.selection,
                           layout=args.layout, total_s=round(wall, 3),
                           write_bytes_per_s=round(sum(u["bytes_written"] for u in units) / wall) if wall else None)
        if len(units) == len(LANGS) and done:
            res["projected_seed_job_s"] = round(SEED_SAMPLES * wall / done, 1)
            res["projected_seed_job_bytes"] = int(res["final_bytes"] * SEED_SAMPLES / done)
        return res

    def _result(self, name: str, done: int, seconds: float, stopped, **extra) -> dict:
        passes = done * len(LANGS)
        res = {"phase": name, "samples": done, "passes": passes, "seconds": round(seconds, 3), "stopped_early": stopped,
               "samples_per_s": round(done / seconds, 3) if done and seconds else None,
               "seconds_per_sample": round(seconds / done, 5) if done else None,
               "batch_size": self.data.batch_size}
        res.update(extra)
        if res.get("tokens"):
            res["tokens_per_s"] = round(res["tokens"] / seconds, 1) if seconds else None
        return res


# ------------------------------------------------------------------------------------ report
def report(res: dict, bench: Bench, smoke: bool) -> None:
    name = res["phase"]
    if not res.get("samples"):
        say(f"[{name}] measured nothing ({res.get('error') or res.get('stopped_early') or 'skipped'})")
        return
    cut = f", stopped early ({res['stopped_early']})" if res["stopped_early"] else ""
    gpu = res.get("peak_gpu_memory_bytes")
    gpu_text = "n/a (cpu)" if gpu is None else f"{gpu / 2**30:.2f} GiB"
    say(f"[{name}] {res['samples']} samples x {len(LANGS)} languages, batch {res['batch_size']}, in {res['seconds']:.2f} s"
        f"{cut}: {res['samples_per_s']:.2f} samples/s ({res['seconds_per_sample'] * 1000:.1f} ms per sample, "
        f"{res['samples_per_s'] * len(LANGS):.2f} sample-language passes/s"
        + (f", {res['tokens_per_s']:.0f} tokens/s" if res.get("tokens_per_s") else "")
        + f"); vision-tower images {res['vision_tower_images']}; peak GPU memory {gpu_text}")
    if name == "extract":
        t = res["total_s"] or 1.0
        vision = "vision once per image" if bench.cache else "vision tower inside every forward"
        say(f"[extract] time: forward ({vision} + capture + early exit) {res['forward_s']:.2f} s "
            f"({res['forward_s'] / t:.0%}), store_batch {res['store_batch_s']:.2f} s ({res['store_batch_s'] / t:.0%}: "
            f"gather + NaN count + device-to-host copy {res['gather_copy_s']:.2f} s, LayerFileStream.append "
            f"(sha256 + crc32 + write) {res['append_s']:.2f} s), {res['checkpoints']} checkpoints (state(): fsync of "
            f"{len(bench.layers) * len(LANGS)} files) {res['commit_s']:.2f} s, finish() "
            + ("not run (stopped early: partial files aborted)" if res["finish_s"] is None else f"{res['finish_s']:.2f} s"))
        say(f"[extract] selection {res['selection']}, layout {res['layout']}: positions kept {res['positions_kept']:,d} "
            f"of {res['tokens']:,d} tokens; rows {human(res['row_bytes_written'])} -> {res['files']} final .pt files of "
            f"{human(res['final_bytes'])} (planned {human(res['expected_bytes'])}: padding, token ids/kinds, zip), "
            f"each byte written once: {human(res['bytes_written'])} at {human(res['write_bytes_per_s'] or 0)}/s over "
            f"the phase; NaN/Inf values {res['nan_values']}; file check {res['file_check']}")
    if name == "unit":
        for u in res["units"]:
            say(f"[unit] {u['language']}: run_unit {u['samples']} samples, all {bench.num_layers} layers, wall "
                f"{u['wall_s']:.2f} s = extraction loop {u['loop_s']:.2f} s + image cache fill "
                f"{u['image_cache_fill_s']:.2f} s + preflight {u['preflight_s']:.2f} s + plan_layout/set-up/finish/summary "
                f"{u['other_s']:.2f} s; vision-tower images {u['vision_tower_images']} (cache hit {u['image_cache_hit']}); "
                f"{u['files']} files, {human(u['bytes_written'])} (on disk {human(u['bytes_on_disk'])}); NaN/Inf "
                f"{u['nan_values']}")
        if not res["image_cache"] and bench.cache:
            say("[unit] no image_cache: this transformers has no mm_encoder_outputs; every unit ran the vision tower")
        elif not res["image_cache"]:
            say(f"[unit] no image_cache: layerwise has no feature cache for {bench.family.name}; each unit runs the "
                f"vision tower inside its forward, as the pipeline does")
    proj = res.get("projected_seed_job_s")
    if proj is not None:
        note = f" [smoke: tiny model on CPU, NOT a {bench.spec['display']} figure]" if smoke else ""
        disk = res.get("projected_seed_job_bytes")
        how = ("2000 x the loop's seconds per sample + finish()" if name == "extract" else
               "2000 x the two units' wall seconds per sample: fixed costs scaled too, so an upper bound; "
               "model loading not included")
        say(f"[{name}] PROJECTED{note} seed job ({SEED_SAMPLES} samples x {SEED_LANGUAGES} languages x "
            f"{bench.num_layers} layers, selection {res.get('selection')}, bf16, batch {res['batch_size']}) on one GPU: "
            f"{proj / 60:.1f} min ({how}), writing {human(disk)} (needs {human(disk / GOAL_S)}/s sustained for "
            f"{GOAL_S / 60:.0f} min)  (goal <= {GOAL_S / 60:.0f} min: {verdict(proj <= GOAL_S)})")


def filesystem(path: Path) -> str:
    best, fstype = "", "?"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) > 2 and str(path).startswith(parts[1]) and len(parts[1]) > len(best):
                best, fstype = parts[1], parts[2]
    except OSError:
        pass
    return f"{fstype} on {best or '?'}"


def architecture_summary(model, spec: dict) -> str:
    """What was built, in one line (Gemma 3: its attention pattern and RoPE, as before)."""
    from layerwise.models.capture import decoder_layers

    text = model.config.get_text_config()
    if spec["model_type"] == "gemma3":
        return (f"global layers {[i for i, t in enumerate(text.layer_types) if t == 'full_attention']}, sliding "
                f"window {text.sliding_window}, RoPE {rope_summary(text)}")
    line = (f"{len(decoder_layers(model))} decoder layers x hidden {text.hidden_size} ({text.num_attention_heads} heads, "
            f"{text.num_key_value_heads} KV heads, MLP {text.intermediate_size}), vocab {text.vocab_size}")
    cross = getattr(text, "cross_attention_layers", None)
    if cross:
        line += f", cross-attention layers {list(cross)}"
    vision = model.config.vision_config
    depth = getattr(vision, "num_hidden_layers", None) or getattr(vision, "depth", None)
    width = getattr(vision, "embed_dim", None) or vision.hidden_size     # Qwen2-VL: hidden_size is the merger's output
    extra = getattr(vision, "num_global_layers", 0)
    size = getattr(vision, "image_size", None)
    return (line + f"; vision {type(vision).__name__.removesuffix('Config')} {depth}{f' + {extra} global' if extra else ''} "
            f"layers x {width}" + (f", {size} px" if size else ", dynamic resolution"))


def parameters_line(counts: dict, spec: dict) -> str:
    total = counts["total"]
    line = f"{total:,d} parameters"
    if spec.get("params"):
        line += f" (expected {spec['params']:,d}: {'ok' if total == spec['params'] else 'MISMATCH'})"
    elif not spec["name"].startswith("tiny"):
        published = PUBLISHED_PARAMS_B[spec["model_type"]]
        line += f" (published {published:.2f} B: {total / (published * 1e9) - 1:+.2%})"
    return line + (f" = vision {counts['vision'] / 1e6:,.1f} M + language model {counts['language'] / 1e6:,.1f} M + "
                   f"LM head {counts['lm_head'] / 1e6:,.1f} M + projector/other {counts['other'] / 1e6:,.1f} M")


def run_meta(model_types: list[str], image_px) -> int:
    """Each family's full-size model on the meta device (no memory, no device): parameters against the published
    count, layers, and the tokens of one synthetic sample through layerwise's own encoding."""
    import numpy as np
    import torch

    from layerwise.core.prompts import load_prompts, prompt_for
    from layerwise.models.capture import decoder_layers
    from layerwise.models.families import family_of
    from layerwise.models.inputs import InputBuilder
    from tests.support import fixtures

    results = {}
    for model_type in model_types:
        t0 = time.perf_counter()
        spec = family_spec(model_type, smoke=False)
        if image_px:
            spec["image_px"] = image_px
        processor, config = make_setup(spec, smoke=False)
        model = build_model(config, spec, "meta", torch.bfloat16, None)
        counts = parameter_breakdown(model, model_type)
        family, text = family_of(model_type), model.config.get_text_config()
        layers = len(decoder_layers(model))
        prompts = load_prompts(None, model_type)
        builder = InputBuilder(processor, family)
        width, height = image_wh(spec["image_px"])
        image = synthetic_image(np.random.default_rng(0), width, height)
        tokens = {}
        for lang, caption in zip(LANGS, fixtures.captions(0, "male")):
            b = builder.encode([image], [prompt_for(lang, prompts)], [caption], torch.device("cpu"), torch.float32)
            tokens[lang] = {"tokens": int(b.attention_mask.sum()), "image_tokens": int(b.image_mask.sum())}
        published = PUBLISHED_PARAMS_B[model_type]
        image_text = (f"{tokens[LANGS[0]]['image_tokens']} image tokens" if family.image_view else
                      "one <|image|> placeholder (the image enters by cross-attention)")
        say(f"[meta] {model_type} ({spec['hub']}): {parameters_line(counts, spec)}; {architecture_summary(model, spec)}; "
            f"one {width}x{height} sample: {tokens[LANGS[0]]['tokens']} / {tokens[LANGS[1]]['tokens']} tokens "
            f"({LANGS[0]} / {LANGS[1]}), {image_text}; {time.perf_counter() - t0:.1f} s")
        results[model_type] = {"hub": spec["hub"], "parameters": counts["total"], "parameter_breakdown": counts,
                               "published_parameters_b": published,
                               "relative_difference": round(counts["total"] / (published * 1e9) - 1, 5),
                               "decoder_layers": layers, "hidden_size": int(text.hidden_size),
                               "image_px": [width, height], "tokens": tokens}
        del model
    say("META_JSON " + json.dumps(results))
    return 0


PHASES = ("disk", "bare", "capture", "extract", "unit")
WEIGHT = {"disk": 0.3, "bare": 0.6, "capture": 0.6, "extract": 3.0, "unit": 2.5}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-type", default="gemma3", choices=(*FAMILY_NAMES, "all"),
                   help="the family to build at its full size (default gemma3: Gemma-3-4B); all: every family (--meta)")
    p.add_argument("--meta", action="store_true",
                   help="build the full-size architecture on the meta device (no memory, no GPU) and print its "
                        "parameter count against the published one and the tokens of one sample; then exit")
    p.add_argument("--image-size", default=None,
                   help="WxH of the synthetic JPEGs (default 768x768 for gemma3, 500x375 like Flickr8K for the others)")
    p.add_argument("--samples", type=int, default=None,
                   help="images for bare/capture/extract, each in 2 languages (default 160; smoke 4)")
    p.add_argument("--unit-samples", type=int, default=None, help="images per run_unit (default 64; smoke 4)")
    p.add_argument("--batch-size", type=int, default=None, help="default 8 (the pipeline's --batch_size default is 1); smoke 2")
    p.add_argument("--budget-s", type=float, default=None,
                   help="hard wall-clock budget for the whole script, model build included (default 360; smoke 120)")
    p.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated, from {', '.join(PHASES)}")
    p.add_argument("--selection", default="all", help="token selection of extract/unit (the seed job: all)")
    p.add_argument("--layout", default="padded", choices=("padded", "ragged"), help="layer file layout (pipeline default padded)")
    p.add_argument("--checkpoint-interval", type=int, default=50, help="as layerwise-extract: commit every N samples")
    p.add_argument("--max-write-gb", type=float, default=24.0,
                   help="cap on one phase's layer files (also at most 40%% of the write folder's free space)")
    p.add_argument("--disk-check-gb", type=float, default=None, help="bytes for the disk phase (default 2; smoke 0.016)")
    p.add_argument("--write-dir", default=None,
                   help="parent of the work folder (samplesheet, layer files, image cache); default: the system temp dir")
    p.add_argument("--attn", default=None, help="attn_implementation (default: transformers' default, sdpa)")
    p.add_argument("--smoke", action="store_true", help="tiny fixture architecture on the CPU, same code path")
    p.add_argument("--dry-run", dest="smoke", action="store_true", help=argparse.SUPPRESS)  # the old name
    p.add_argument("--json-out", default=None)
    p.add_argument("--force-patched-diet", action="store_true", help=argparse.SUPPRESS)  # tests the fallback path
    args = p.parse_args()
    args.samples = args.samples or (4 if args.smoke else 160)
    args.unit_samples = args.unit_samples or (4 if args.smoke else 64)
    args.batch_size = args.batch_size or (2 if args.smoke else 8)
    args.budget_s = args.budget_s or (120.0 if args.smoke else 360.0)
    args.disk_check_gb = args.disk_check_gb or (0.016 if args.smoke else 2.0)
    t_start = time.perf_counter()
    deadline = t_start + args.budget_s
    phases = [x.strip() for x in args.phases.split(",") if x.strip()]
    unknown = [x for x in phases if x not in PHASES]
    if unknown:
        p.error(f"unknown phases {unknown}; choose from {list(PHASES)}")
    image_px = None
    if args.image_size:
        try:
            w, h = (int(x) for x in args.image_size.lower().split("x"))
            image_px = (w, h)
        except ValueError:
            p.error(f"--image-size {args.image_size!r}: expected WIDTHxHEIGHT, e.g. 500x375")
    if args.model_type == "all" and not args.meta:
        p.error("--model-type all needs --meta (the benchmark runs one family at a time)")

    import torch
    import transformers

    transformers.logging.set_verbosity_error()   # e.g. the image-processor backend notice
    if args.meta:
        torch.set_num_threads(1)
        return run_meta(list(FAMILY_NAMES) if args.model_type == "all" else [args.model_type], image_px)
    spec = family_spec(args.model_type, args.smoke)
    if image_px and not args.smoke:
        spec["image_px"] = image_px
    if args.smoke:
        device = torch.device("cpu")
        torch.set_num_threads(1)  # small shared CPUs: one thread gives steadier timings
    else:
        if not torch.cuda.is_available():
            say("no CUDA device: run on a GPU machine, or pass --smoke")
            return 2
        device = torch.device("cuda")
    dtype = torch.bfloat16
    say(f"layerwise GPU benchmark, {args.model_type} ({spec['hub']})"
        f"{' (SMOKE: tiny fixture architecture on CPU)' if args.smoke else ''}: "
        f"device {torch.cuda.get_device_name() if device.type == 'cuda' else platform.processor() or 'cpu'}, "
        f"torch {torch.__version__}, transformers {transformers.__version__}, python {platform.python_version()}, "
        f"cpus {os.cpu_count()}")

    work = Path(tempfile.mkdtemp(prefix="layerwise-gpu-bench-", dir=args.write_dir))
    results, out, bench = [], {}, None
    try:
        t0 = time.perf_counter()
        processor, config = make_setup(spec, args.smoke)
        model = build_model(config, spec, device, dtype, args.attn)
        if device.type == "cuda":
            torch.cuda.synchronize()
        counts = parameter_breakdown(model, spec["model_type"])
        params = counts["total"]
        say(f"model: {spec['name']}, {parameters_line(counts, spec)}, built on {device} in "
            f"{time.perf_counter() - t0:.1f} s, dtype bf16; {architecture_summary(model, spec)}; attention "
            f"{model.config._attn_implementation}; image processor {type(processor.image_processor).__name__}; weights "
            + (f"{torch.cuda.memory_allocated() / 2**30:.2f} GiB on the GPU" if device.type == "cuda" else "on CPU"))

        t0 = time.perf_counter()
        n_data = max(args.samples, args.unit_samples)
        csv_path = build_dataset(work / "data", n_data, spec["image_px"])
        from layerwise.models.families import family_of

        family = family_of(spec["model_type"])
        data = Data(processor, family, csv_path, args.samples, args.batch_size, dtype)
        bench = Bench(args, spec, model, processor, device, dtype, work, data)
        from tests.support.sheets import verified_sheet  # a unit reads PREFLIGHT's verified sheet

        bench.data_csv = verified_sheet(csv_path, work / "verified", LANGS)
        if args.force_patched_diet:
            bench.diet_path = "patched get_image_features"
        free = shutil.disk_usage(work).free
        bench.cap_bytes = min(args.max_write_gb * 1e9, free * 0.4)
        size = image_wh(spec["image_px"])
        image_text = (f"{data.image_tokens[LANGS[0]] / args.samples:.0f} image tokens" if family.image_view else
                      "no image tokens: one <|image|> placeholder, the image enters by cross-attention")
        say(f"inputs: {n_data} synthetic samples ({f'JPEG {size[0]}x{size[1]} px' if size else 'fixture PNGs'}"
            f"), encoded by layerwise.models.inputs.InputBuilder in {time.perf_counter() - t0:.1f} s: "
            f"{data.tokens[LANGS[0]] / args.samples:.0f} / {data.tokens[LANGS[1]] / args.samples:.0f} tokens per sample "
            f"({LANGS[0]} / {LANGS[1]}; {image_text}); batch {args.batch_size}, layout "
            f"{args.layout}, selection {args.selection}, checkpoint every {args.checkpoint_interval}; write folder {work} "
            f"({filesystem(work)}, {free / 1e9:.0f} GB free, cap per phase {bench.cap_bytes / 1e9:.1f} GB); vision "
            + (f"tower once per image via {bench.diet_path}" if bench.cache else f"tower: {bench.diet_path}")
            + f"; budget {args.budget_s:.0f} s")

        if filesystem(work).startswith("tmpfs"):
            say(f"WARNING: {work} is in memory (tmpfs): write figures are not the local disk's; pass --write-dir")
        diet_diff = bench.check_diet()
        if diet_diff is None:
            say("compute-diet check: n/a (no feature cache for this family)")
        else:
            say(f"compute-diet check: max |plain - reused image features| over all captured layers of batch 0: "
                f"{diet_diff:.3g}")
        out["compute_diet_max_abs_diff"] = diet_diff

        for i, name in enumerate(phases):
            left = deadline - time.perf_counter()
            share = left * WEIGHT[name] / sum(WEIGHT[x] for x in phases[i:])
            if left < 5:
                say(f"[{name}] skipped: budget spent")
                results.append({"phase": name, "samples": 0, "skipped": "budget"})
                continue
            try:
                if name == "disk":
                    d = disk_check(work, int(args.disk_check_gb * 1e9))
                    say(f"[disk] {human(d['bytes'])} on {filesystem(work)}: write+fsync {human(d['write_fsync_Bps'])}/s, "
                        f"sha256 {human(d['sha256_Bps'])}/s, crc32 {human(d['crc32_Bps'])}/s, PtFileWriter (write + "
                        f"sha256 + crc32 + fsync) {human(d['ptfile_Bps'])}/s  (single thread each)")
                    results.append({"phase": "disk", **{k: round(v) for k, v in d.items()}})
                    continue
                if name in ("bare", "capture"):
                    res = bench.run_forward_phase(name, share, deadline)
                elif name == "extract":
                    res = bench.run_extract(share, deadline)
                else:
                    res = bench.run_units(share, deadline)
            except Exception as exc:  # a broken phase must not cost the others their figures
                import traceback

                traceback.print_exc()
                res = {"phase": name, "samples": 0, "error": f"{type(exc).__name__}: {exc}"}
            results.append(res)
            report(res, bench, args.smoke)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    by = {r["phase"]: r for r in results if r.get("samples")}
    say()
    ratios = {}
    if "bare" in by:
        for name in ("capture", "extract", "unit"):
            if name in by:
                ratios[name] = by["bare"]["seconds_per_sample"] / by[name]["seconds_per_sample"]
        if "capture" in ratios:
            say(f"ratio capture/bare (hooks + early exit, nothing copied; same inputs): {ratios['capture']:.3f}")
        if "extract" in ratios:
            vision = "vision once per image" if bench.cache else "vision tower inside every forward"
            say(f"RATIO capture+write/bare throughput (extract vs bare forward, same inputs, {vision} in "
                f"both): {ratios['extract']:.3f}  (goal >= {GOAL_RATIO}: {verdict(ratios['extract'] >= GOAL_RATIO)})")
        if "unit" in ratios:
            say(f"ratio run_unit end to end/bare (incl. preflight, input encoding, image cache, finish): {ratios['unit']:.3f}")
    projected = {name: r["projected_seed_job_s"] for name, r in by.items() if r.get("projected_seed_job_s") is not None}
    head = "unit" if "unit" in projected else ("extract" if "extract" in projected else None)
    parts = []
    if head:
        parts.append(f"(a) seed job projected {projected[head] / 60:.1f} min from {head}"
                     + (f" (hot path alone {projected['extract'] / 60:.1f} min)" if head == "unit" and "extract" in projected else "")
                     + f" -> goal <= {GOAL_S / 60:.0f} min {verdict(projected[head] <= GOAL_S)}")
    if "extract" in ratios:
        parts.append(f"(b) capture+write/bare {ratios['extract']:.3f} -> goal >= {GOAL_RATIO} "
                     f"{verdict(ratios['extract'] >= GOAL_RATIO)}")
    failed = [r["phase"] for r in results if r.get("error")]
    say("Summary: " + "; ".join(parts or ["nothing measured"])
        + (f"; FAILED phases: {', '.join(failed)}" if failed else "")
        + f". Wall time {time.perf_counter() - t_start:.1f} s of a {args.budget_s:.0f} s budget.")
    out.update({
        "smoke": args.smoke, "dry_run": args.smoke,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "transformers": transformers.__version__, "model": spec["name"],
        "model_type": spec["model_type"], "hub_id": spec["hub"], "image_px": image_wh(spec["image_px"]),
        "parameters": params, "parameter_breakdown": counts,
        "published_parameters_b": None if args.smoke else PUBLISHED_PARAMS_B[spec["model_type"]],
        "tokens_per_sample": ({lang: round(bench.data.tokens[lang] / args.samples, 1) for lang in LANGS}
                              if bench else None),
        "image_tokens_per_sample": ({lang: round(bench.data.image_tokens[lang] / args.samples, 1) for lang in LANGS}
                                    if bench else None),
        "samples": args.samples, "unit_samples": args.unit_samples, "batch_size": args.batch_size,
        "layout": args.layout, "selection": args.selection, "languages": len(LANGS),
        "layers": bench.num_layers if bench else None, "compute_diet_path": bench.diet_path if bench else None,
        "seed_job": {"samples": SEED_SAMPLES, "languages": SEED_LANGUAGES,
                     "layers": bench.num_layers if bench else SEED_LAYERS, "goal_s": GOAL_S,
                     "goal_ratio": GOAL_RATIO},
        "ratios_vs_bare": {k: round(v, 4) for k, v in ratios.items()}, "projected_seed_job_s": projected,
        "phases": results, "failed_phases": failed, "wall_s": round(time.perf_counter() - t_start, 1),
        "budget_s": args.budget_s,
    })
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=2) + "\n")
    say("BENCHMARK_JSON " + json.dumps(out))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
