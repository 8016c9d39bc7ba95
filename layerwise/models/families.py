"""The vision-language model families layerwise runs: one table, one entry per `config.json` `model_type`.

Everything that differs between families is a field here; the code that builds inputs, token kinds,
checks weights and caches image features reads these fields and never tests a model type by name.
Adding a family is one entry plus a tiny fixture of its real architecture (tests/support/families.py).

What is the same for every family, and so not a field:
- the decoder layers are `model.get_decoder().layers` (hooks there give the raw residual stream; for
  Mllama the list includes the cross-attention layers, which are in the residual stream too). Where that
  list sits in the loaded model's `named_modules()` differs, and is the field `decoder_layers`;
- image positions are `input_ids == image_token_id` (never `token_type_ids`, whose meaning differs);
- a sample's text is built by the model's own processor: its chat template with the caption as the
  assistant turn, or, without one (PaliGemma), the prompt as `text` and the caption as `suffix`.
"""
from __future__ import annotations

from dataclasses import dataclass

from layerwise.core.errors import LayerwiseError

# How a sample's text is built
CHAT = "chat"                  # the processor's chat template: user turn (image, prompt), assistant turn (caption)
PREFIX_SUFFIX = "prefix_suffix"  # the processor's text= (image + prompt, bidirectional) and suffix= (caption, causal)

# How many image tokens a sample has
FIXED = "fixed"                # the same for every image (Gemma 3: 256, PaliGemma: 256, LLaVA-1.5: 576)
PER_IMAGE = "per_image"        # depends on the image's size (dynamic resolution, tiles): planned per sample
CROSS_ATTENTION = "cross_attention"  # one placeholder token; the image enters through cross-attention layers


@dataclass(frozen=True)
class Family:
    model_type: str                  # config.json model_type
    architecture: str                # the transformers class (config.json `architectures`)
    name: str                        # what users call it
    examples: tuple[str, ...]        # hub ids
    vision_module: str               # attribute of the base model holding the vision encoder
    vision_weights: str              # a substring every vision-encoder weight name contains
    prompt_format: str               # CHAT | PREFIX_SUFFIX
    image_tokens: str                # FIXED | PER_IMAGE | CROSS_ATTENTION
    nested_images: bool              # the processor takes images as [[img], [img], ...] (one list per sample)
    # The dotted name, in `named_modules()` of the model `AutoModelForImageTextToText` loads, of the module list
    # `get_decoder().layers` that the capture hooks (layerwise.models.capture): layer L's output, which is what a
    # layer file stores, is the output of module f"{decoder_layers}.{L}" (an SAE's `hf_hook_name`). Checked
    # against the walked module names of every family's tiny model (tests/unit/test_sae_cfg.py).
    decoder_layers: str
    fp16_hazard: str = ""            # why --dtype float16 is refused, "" when it is allowed
    feature_cache: bool = False      # the forward takes precomputed image features (mm_encoder_outputs): the
                                     # vision tower runs once per image, its features are cached (extract.images)
    feature_inputs: tuple[str, ...] = ()  # image-processor outputs get_image_features takes besides pixel_values
    turn_markers: tuple[str, ...] = ()   # template tokens around turns (kind `template`, never prompt/caption text)
    needs_inputs: tuple[str, ...] = ()   # processor outputs the model must get (checked, never silently dropped)

    def hf_hook_name(self, layer: int) -> str:
        """The Hugging Face module path whose output is the stored hidden state of decoder layer `layer`."""
        return f"{self.decoder_layers}.{int(layer)}"

    @property
    def image_view(self) -> bool:
        """Whether image tokens carry the image in the sequence (the analysis' `image` view exists)."""
        return self.image_tokens != CROSS_ATTENTION

    def describe(self) -> str:
        return f"{self.model_type} ({self.name}, e.g. {self.examples[0]})"


FAMILIES: dict[str, Family] = {f.model_type: f for f in (
    Family("gemma3", "Gemma3ForConditionalGeneration", "Gemma 3", ("google/gemma-3-4b-it", "google/gemma-3-12b-it"),
           decoder_layers="model.language_model.layers",
           vision_module="vision_tower", vision_weights="vision_tower", prompt_format=CHAT, image_tokens=FIXED,
           nested_images=True, fp16_hazard="its activations overflow float16 and turn into inf/NaN (transformers#36822)",
           feature_cache=True, turn_markers=("<start_of_turn>", "<end_of_turn>"),
           # token_type_ids mark the image tokens: Gemma 3 attends bidirectionally among them
           needs_inputs=("token_type_ids",)),
    Family("paligemma", "PaliGemmaForConditionalGeneration", "PaliGemma 1 and 2", ("google/paligemma-3b-pt-224", "google/paligemma-3b-mix-224",
                                               "google/paligemma2-3b-pt-224"),
           decoder_layers="model.language_model.layers",
           vision_module="vision_tower", vision_weights="vision_tower", prompt_format=PREFIX_SUFFIX, image_tokens=FIXED,
           nested_images=False, fp16_hazard="Gemma-based decoders overflow float16 (transformers#36822)", feature_cache=True,
           # token_type_ids mark the suffix (the caption): the prefix (image + prompt) is bidirectional
           needs_inputs=("token_type_ids",)),
    Family("qwen2_vl", "Qwen2VLForConditionalGeneration", "Qwen2-VL", ("Qwen/Qwen2-VL-7B-Instruct", "Qwen/Qwen2-VL-2B-Instruct"),
           decoder_layers="model.language_model.layers",
           vision_module="visual", vision_weights="visual.", prompt_format=CHAT, image_tokens=PER_IMAGE,
           nested_images=False, turn_markers=("<|im_start|>", "<|im_end|>"), needs_inputs=("image_grid_thw",),
           # image_grid_thw stays in the forward's inputs with cached features: it gives the rope index
           feature_cache=True, feature_inputs=("image_grid_thw",)),
    Family("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration", "Qwen2.5-VL", ("Qwen/Qwen2.5-VL-7B-Instruct", "Qwen/Qwen2.5-VL-3B-Instruct"),
           decoder_layers="model.language_model.layers",
           vision_module="visual", vision_weights="visual.", prompt_format=CHAT, image_tokens=PER_IMAGE,
           nested_images=False, turn_markers=("<|im_start|>", "<|im_end|>"), needs_inputs=("image_grid_thw",),
           feature_cache=True, feature_inputs=("image_grid_thw",)),
    Family("llava", "LlavaForConditionalGeneration", "LLaVA-1.5", ("llava-hf/llava-1.5-7b-hf", "llava-hf/llava-1.5-13b-hf"),
           decoder_layers="model.language_model.layers",
           vision_module="vision_tower", vision_weights="vision_tower", prompt_format=CHAT, image_tokens=FIXED,
           nested_images=False, feature_cache=True),
    Family("llava_next", "LlavaNextForConditionalGeneration", "LLaVA-NeXT (1.6)", ("llava-hf/llava-v1.6-mistral-7b-hf", "llava-hf/llava-v1.6-vicuna-7b-hf"),
           decoder_layers="model.language_model.layers",
           vision_module="vision_tower", vision_weights="vision_tower", prompt_format=CHAT, image_tokens=PER_IMAGE,
           nested_images=False, needs_inputs=("image_sizes",), feature_cache=True, feature_inputs=("image_sizes",)),
    Family("mllama", "MllamaForConditionalGeneration", "Llama 3.2 Vision", ("meta-llama/Llama-3.2-11B-Vision-Instruct", "meta-llama/Llama-3.2-11B-Vision"),
           decoder_layers="model.language_model.layers",
           vision_module="vision_model", vision_weights="vision_model", prompt_format=CHAT, image_tokens=CROSS_ATTENTION,
           nested_images=True, turn_markers=("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
           # no feature cache: the image enters the cross-attention layers, not the sequence, and the forward takes
           # no mm_encoder_outputs (its cross_attention_states would be ~52 MB per image at full size)
           needs_inputs=("cross_attention_mask", "aspect_ratio_ids", "aspect_ratio_mask")),
    Family("idefics3", "Idefics3ForConditionalGeneration", "Idefics3", ("HuggingFaceM4/Idefics3-8B-Llama3",),
           decoder_layers="model.text_model.layers",
           vision_module="vision_model", vision_weights="vision_model", prompt_format=CHAT, image_tokens=PER_IMAGE,
           nested_images=True, turn_markers=("<end_of_utterance>",), needs_inputs=("pixel_attention_mask",),
           feature_cache=True, feature_inputs=("pixel_attention_mask",)),
    Family("smolvlm", "SmolVLMForConditionalGeneration", "SmolVLM", ("HuggingFaceTB/SmolVLM2-2.2B-Instruct", "HuggingFaceTB/SmolVLM2-500M-Video-Instruct"),
           decoder_layers="model.text_model.layers",
           vision_module="vision_model", vision_weights="vision_model", prompt_format=CHAT, image_tokens=PER_IMAGE,
           nested_images=True, turn_markers=("<end_of_utterance>",), needs_inputs=("pixel_attention_mask",),
           feature_cache=True, feature_inputs=("pixel_attention_mask",)),
)}

# Gated checkpoints: a missing offline copy gets a message about the licence and HF_TOKEN
GATED_PREFIXES = ("google/gemma", "google/paligemma", "meta-llama/")


def supported_text() -> str:
    return "; ".join(f.describe() for f in FAMILIES.values())


def family_of(model_type: str, where: str = "--model") -> Family:
    """The family of a config's model_type, or an error that lists the supported ones."""
    try:
        return FAMILIES[model_type]
    except KeyError:
        raise LayerwiseError(f"{where}: model_type {model_type!r} is not an image-text family layerwise runs. "
                             f"Supported: {supported_text()}") from None
