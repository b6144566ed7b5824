"""``MovaConfig`` / ``MovaForCausalLM``: frozen visual experts + fusion network + any causal LLM.

The model follows the transformers conventions so that users keep their tools: ``save_pretrained`` /
``from_pretrained`` in safetensors, ``AutoConfig`` / ``AutoModelForCausalLM`` / ``AutoModelForImageTextToText``
registration, ``generate()`` with a KV cache, gradient checkpointing, ``dtype`` and ``attn_implementation``.

``generate()`` takes images in every decoding mode: beam search and ``num_return_sequences`` repeat each
sample's rows of the ``images`` dict with it (:mod:`mova.model.image_batch`), a static cache's 4-D mask is
never read as a padding mask, ``inputs_embeds`` get the visual tokens in the slots holding the image token's
embedding, the image token itself is never generated, and decoding steps (which hold no image tokens) run
without images, so they compile as one graph.

Images enter as ``<image>`` tokens that the processor has already expanded to the right count, so
every tensor (ids, mask, labels, position ids) has its final length before the LLM runs: the model
embeds the text, scatters the fusion network's visual tokens into the image-token slots, and gives the
LLM position ids from the configured compression schemes (:mod:`mova.model.positions`). Text-only calls
go straight to the wrapped LLM and behave exactly like it.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    GenerationMixin,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers.configuration_utils import SubConfigSpec
from transformers.generation.logits_process import SuppressTokensLogitsProcessor
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.utils.deprecation import deprecate_kwarg

from mova.config import ExpertConfig, FusionConfig
from mova.errors import PlaceholderMismatchError
from mova.model.experts import build_expert
from mova.model.fusion import VisualTokens, build_fusion, build_layout
from mova.model.image_batch import expand_images, images_per_sample
from mova.model.layout import BlockSpec, VisualLayout
from mova.model.packing import packed_attention_inputs
from mova.model.positions import position_ids_from_layout

logger = logging.getLogger(__name__)

#: keys of ``MovaConfig.experts`` entries that are measured shapes, not ``ExpertConfig`` fields.
SHAPE_KEYS = ("grid", "num_prefix_tokens", "hidden_size", "input_kind")


class MovaConfig(PreTrainedConfig):
    """Configuration of a :class:`MovaForCausalLM`.

    ``experts`` holds one dict per expert: the :class:`~mova.config.ExpertConfig` fields plus its
    measured shapes (``grid``, ``num_prefix_tokens``, ``hidden_size``, ``input_kind``), recorded when the
    config is built so that the processor and ``mova model-info`` never need to build an encoder.
    ``fusion`` holds the :class:`~mova.config.FusionConfig` fields.
    """

    model_type = "mova"
    sub_configs_defaults = {"text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama")}
    text_config: dict | PreTrainedConfig | None = None
    experts: list | None = None
    fusion: dict | None = None
    image_token_id: int = 0
    template: str = "vicuna_v1"
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        self.experts = list(self.experts or [])
        self.fusion = dict(self.fusion or {})
        if self.text_config is not None and getattr(self.text_config, "tie_word_embeddings", False):
            self.tie_word_embeddings = True

    def expert_configs(self) -> list[ExpertConfig]:
        return [ExpertConfig(**{k: v for k, v in e.items() if k not in SHAPE_KEYS}) for e in self.experts]

    def fusion_options(self) -> FusionConfig:
        return FusionConfig(**self.fusion)

    def blocks(self) -> list[BlockSpec]:
        return [BlockSpec.from_dict(e) for e in self.experts]

    def layout(self) -> VisualLayout:
        return build_layout(self.blocks(), self.fusion_options())

    @property
    def max_positions(self) -> int | None:
        return getattr(self.text_config, "max_position_embeddings", None)


class MovaPreTrainedModel(PreTrainedModel):
    config: MovaConfig
    config_class = MovaConfig
    #: the model is its own base (there is no headless variant), so ``model.base_model`` is the model.
    base_model_prefix = ""
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def _init_weights(self, module: nn.Module) -> None:
        # The LLM initialises itself (it is a PreTrainedModel child), experts keep their library's
        # init or loaded weights, and the fusion network initialises itself in its constructor.
        return None


class MovaForCausalLM(MovaPreTrainedModel, GenerationMixin):
    """Poly-visual-expert VLM: ``experts`` (frozen) -> ``fusion`` (trainable) -> ``language_model``."""

    def __init__(self, config: MovaConfig, language_model: PreTrainedModel | None = None):
        super().__init__(config)
        # A loaded LLM can be handed in so that a 7B model is not first built with random weights.
        self.language_model = language_model or AutoModelForCausalLM.from_config(config.text_config)
        self.experts = nn.ModuleDict({c.name: build_expert(c) for c in config.expert_configs()})
        self.fusion = build_fusion(config.blocks(), config.text_config.hidden_size, config.fusion_options())
        self.layout = config.layout()
        self.post_init()
        self._set_expert_attention(config._attn_implementation)

    def _set_expert_attention(self, implementation: str | None) -> None:
        """Give the experts that are transformers models the requested attention implementation.

        ``from_pretrained(attn_implementation=...)`` reaches the LLM through ``text_config``; experts are
        built from Mova's own configs, so the request is passed on here. An expert that does not support it
        (e.g. LayoutLMv3 has no flash-attention path) keeps its default, as transformers' composite models do.
        """
        if not implementation:
            return
        for name, expert in self.experts.items():
            for module in expert.modules():
                if not isinstance(module, PreTrainedModel) or module.config._attn_implementation == implementation:
                    continue
                try:
                    module.set_attn_implementation(implementation)
                except (ValueError, ImportError) as e:
                    logger.info("expert %r keeps attention %r: %s", name, module.config._attn_implementation, e)

    def enable_input_require_grads(self) -> None:
        """Make the LLM's token embeddings output require grad (LoRA / adapters with gradient checkpointing).

        Only the LLM has text embeddings: the experts are frozen image encoders (transformers' generic
        version would ask LayoutLMv3's visual branch for word embeddings it does not have), and the visual
        tokens come from the trainable fusion network, so they carry grad already.
        """
        self.language_model.enable_input_require_grads()
        self._require_grads_hooks = self.language_model._require_grads_hooks
        self._require_grads_hook = self._require_grads_hooks[0] if self._require_grads_hooks else None

    def disable_input_require_grads(self) -> None:
        self.language_model.disable_input_require_grads()
        self._require_grads_hooks = []

    # --- embeddings plumbing (transformers' resize / tie / generation helpers use these) -------
    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module | None:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    # --- activation checkpointing: only the LLM's layers are worth recomputing ----------------
    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict | None = None,
                                        every_n_layers: int = 1, offload: bool = False) -> None:
        """Checkpoint the LLM's decoder layers (``gradient_checkpointing_enable`` lands here too).

        Frozen experts run without grad and keep no activations, and the fusion network is shallow, so
        the LLM is where the memory goes.
        """
        self.language_model.activation_checkpointing_enable(activation_checkpointing_kwargs,
                                                            every_n_layers=every_n_layers, offload=offload)

    def activation_checkpointing_disable(self) -> None:
        self.language_model.activation_checkpointing_disable()

    # --- images ---------------------------------------------------------------------------------
    def _ocr_lengths(self, images: dict[str, torch.Tensor] | None, num_images: int) -> list[tuple[int, ...]]:
        ocr = [b.name for b in self.layout.ocr_blocks]
        if not ocr:
            return [()] * num_images
        lens = [(images[f"{n}.input_ids"] >= 0).sum(-1).tolist() for n in ocr]
        return [tuple(int(col[i]) for col in lens) for i in range(num_images)]

    def _num_images(self, images: dict[str, torch.Tensor] | None) -> int:
        if not images:
            return 0
        for b in self.config.blocks():
            keys = (b.name, f"{b.name}.features") if b.input_kind == "pixels" else (f"{b.name}.input_ids",)
            if not any(k in images for k in keys):
                raise KeyError(f"images has no entry {' or '.join(map(repr, keys))} for expert {b.name!r}; "
                               f"given: {sorted(images)}")
        return int(next(iter(images.values())).shape[0])

    def encode_images(self, images: dict[str, torch.Tensor]) -> VisualTokens:
        """Run the experts (no grad when frozen) and the fusion network over a batch of images.

        ``images[f"{name}.features"]`` (``[num_images, N, D]``, e.g. read from a feature cache)
        replaces running expert ``name``: frozen experts give the same output every time.
        """
        num_images = self._num_images(images)
        features: dict[str, torch.Tensor] = {}
        ocr_inputs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for name, expert in self.experts.items():
            if expert.input_kind == "ocr":
                ids, boxes = images[f"{name}.input_ids"], images[f"{name}.boxes"]
                ocr_inputs[name] = (ids.to(self.device), boxes.to(self.device))
                continue
            if f"{name}.features" in images:
                features[name] = images[f"{name}.features"].to(self.device)
                continue
            param = next(expert.parameters(), None)
            pixels = images[name].to(self.device, dtype=param.dtype if param is not None else None)
            with torch.set_grad_enabled(torch.is_grad_enabled() and not expert.cfg.frozen):
                features[name] = expert(pixels)
        return self.fusion(features, ocr_inputs, self.get_input_embeddings(), num_images)

    def image_token_mask(self, input_ids: torch.Tensor | None = None,
                         inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, L]``, True on image-token slots: read off ``input_ids`` or, when only ``inputs_embeds`` are
        given, found as the rows equal to the image token's embedding (as transformers' VLMs do)."""
        if input_ids is not None and (inputs_embeds is None or input_ids.shape[:2] == inputs_embeds.shape[:2]):
            return input_ids == self.config.image_token_id
        if inputs_embeds is None:
            raise ValueError("give input_ids or inputs_embeds")
        token = torch.tensor(self.config.image_token_id, device=inputs_embeds.device)
        image_embed = self.get_input_embeddings()(token).to(inputs_embeds.dtype)
        return (inputs_embeds == image_embed).all(-1)

    def visual_layout(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None,
                      images: dict[str, torch.Tensor] | None,
                      image_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token ``(local, advance)`` of a whole batch: 0/1 for text, the layout for image tokens.

        ``attention_mask`` counts only as a 2-D padding mask (a 4-D one, as a static cache gets, says
        nothing about which tokens are padding); ``image_mask`` replaces ``input_ids`` for embeddings input.
        """
        if image_mask is None:
            image_mask = self.image_token_mask(input_ids)
        num_images = self._num_images(images)
        vis_local, vis_adv = self.layout.batch(self._ocr_lengths(images, num_images))
        found = int(image_mask.sum())
        if found != vis_local.numel():
            raise PlaceholderMismatchError(
                f"the inputs hold {found} image tokens but the {num_images} image(s) given make "
                f"{vis_local.numel()} visual tokens; build inputs with MovaProcessor")
        if attention_mask is not None and attention_mask.dim() == 2:
            advance = attention_mask.long().clone()
        else:
            advance = torch.ones(image_mask.shape, dtype=torch.long, device=image_mask.device)
        local = torch.zeros_like(advance)
        local[image_mask] = vis_local.to(advance.device)
        advance[image_mask] = vis_adv.to(advance.device)
        return local, advance

    def compute_position_ids(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None = None,
                             images: dict[str, torch.Tensor] | None = None,
                             image_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Position ids under the experts' schemes; padding (mask 0) gets 0 and advances nothing."""
        if attention_mask is not None and attention_mask.dim() != 2:
            raise ValueError("position ids of image tokens need the 2-D padding mask; with a 4-D attention mask "
                             "pass position_ids (compute_position_ids(input_ids, padding_mask, images))")
        local, advance = self.visual_layout(input_ids, attention_mask, images, image_mask)
        pos = position_ids_from_layout(local, advance)
        if attention_mask is not None:
            pos = pos.masked_fill(attention_mask == 0, 0)
        return pos

    def images_per_sample(self, image_mask: torch.Tensor, images: dict[str, torch.Tensor]) -> list[int]:
        """How many of ``images``' rows each sample holds (from its image tokens; OCR images vary in size)."""
        lengths = self._ocr_lengths(images, self._num_images(images))
        return images_per_sample(image_mask, [self.layout.num_tokens(o) for o in lengths])

    def merge_image_embeds(self, inputs_embeds: torch.Tensor, image_mask: torch.Tensor,
                           images: dict[str, torch.Tensor]) -> torch.Tensor:
        """``inputs_embeds`` with the fusion network's visual tokens in the image-token slots."""
        visual = self.encode_images(images)
        return inputs_embeds.masked_scatter(image_mask.unsqueeze(-1), visual.embeds.to(inputs_embeds.dtype))

    # --- forward / generate ---------------------------------------------------------------------
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        images: dict[str, torch.Tensor] | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        sequence_ids: torch.LongTensor | None = None,
        branch_ids: torch.LongTensor | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Like the wrapped LLM's forward, plus ``images`` for the ``<image>`` tokens in ``input_ids``.

        ``inputs_embeds`` may stand in for ``input_ids``: the image-token slots (rows equal to the image
        token's embedding) receive the visual tokens, as with ids.

        When continuing a KV cache by hand, pass ``position_ids`` (``generate()`` does this for you):
        with compressed schemes the next id is not the cache length.

        ``sequence_ids`` (``[B, L]``: which sample of its row each token belongs to, -1 for padding)
        marks a packed batch (:class:`~mova.data.llava.PackedCollator`): attention then stays inside each
        sample (:mod:`mova.model.packing`), and ``position_ids`` must be given, restarting per sample.
        ``branch_ids`` (with ``sequence_ids``) makes each sample a shared prompt (branch 0) followed by
        responses that see the prompt but not each other: a DPO pair scored in one pass.
        """
        if sequence_ids is not None:
            self._check_packed(sequence_ids, position_ids, cache)
        image_mask = None
        if input_ids is not None and inputs_embeds is None:
            image_mask = self.image_token_mask(input_ids)
            # (The check is skipped under torch.compile: a data-dependent branch would break the graph of a
            # text-only step, e.g. a compiled decoding step, whose images generate() no longer passes.)
            if images is None and not torch.compiler.is_compiling() and image_mask.any():
                raise PlaceholderMismatchError("input_ids contain image tokens but no images were given")
        elif inputs_embeds is not None and images:
            image_mask = self.image_token_mask(input_ids, inputs_embeds)
        if image_mask is not None and images and image_mask.any():
            if position_ids is None:
                position_ids = self.compute_position_ids(input_ids, attention_mask, images, image_mask)
                if attention_mask is None and cache is None and sequence_ids is None:
                    # One sample per row. Without a mask and a cache, transformers reads every position id that
                    # does not step by one as the start of a packed sample, and compressed ids repeat or jump.
                    attention_mask = torch.ones_like(image_mask, dtype=torch.long)
            else:
                self.visual_layout(input_ids, attention_mask, images, image_mask)  # validates the token count
            if inputs_embeds is None:
                inputs_embeds = self.get_input_embeddings()(input_ids.masked_fill(image_mask, 0))
            inputs_embeds = self.merge_image_embeds(inputs_embeds, image_mask, images)
            input_ids = None
            if labels is not None:
                labels = labels.masked_fill(image_mask, -100)
        if sequence_ids is not None:
            dtype = inputs_embeds.dtype if inputs_embeds is not None else self.get_input_embeddings().weight.dtype
            packed = packed_attention_inputs(sequence_ids, self.language_model.config._attn_implementation, dtype,
                                             branch_ids)
            attention_mask = packed.pop("attention_mask")
            kwargs.update(packed)
        return self.language_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )

    @staticmethod
    def _check_packed(sequence_ids: torch.Tensor, position_ids: torch.Tensor | None, cache: Any) -> None:
        # Position ids cannot be derived from a packed row (each sample restarts at 0), and a KV cache
        # continues one sequence per row, which a packed row is not.
        if position_ids is None:
            raise ValueError("sequence_ids (a packed batch) needs position_ids restarting at 0 for each sample; "
                             "build packed batches with mova.data.llava.PackedCollator")
        if cache is not None:
            raise ValueError("sequence_ids (a packed batch) cannot be used with a KV cache")
        if sequence_ids.shape != position_ids.shape:
            raise ValueError(f"sequence_ids has shape {tuple(sequence_ids.shape)} but position_ids "
                             f"{tuple(position_ids.shape)}; both are [batch, length]")

    def _generation_image_mask(self, inputs_tensor: torch.Tensor | None, model_kwargs: dict) -> torch.Tensor | None:
        """The prompt's image-token mask as ``generate()`` holds it (ids, or embeddings, or both)."""
        if not model_kwargs.get("images"):
            return None
        ids = model_kwargs.get("input_ids")
        if ids is None and inputs_tensor is not None and not inputs_tensor.is_floating_point():
            ids = inputs_tensor
        embeds = model_kwargs.get("inputs_embeds")
        if embeds is None and inputs_tensor is not None and inputs_tensor.is_floating_point():
            embeds = inputs_tensor
        if ids is not None and ids.shape[-1] == 0:
            ids = None
        if ids is None and embeds is None:
            return None
        return self.image_token_mask(ids, embeds)

    def _prepare_position_ids_for_generation(self, inputs_tensor: torch.Tensor, model_kwargs: dict) -> torch.Tensor:
        # generate() builds prompt position ids from the attention mask alone, which is wrong for a
        # compressed scheme; later steps extend the last id by one, which the layout makes correct.
        image_mask = self._generation_image_mask(inputs_tensor, model_kwargs)
        if image_mask is not None and image_mask.any():
            return self.compute_position_ids(None, model_kwargs.get("attention_mask"), model_kwargs["images"],
                                             image_mask)
        return super()._prepare_position_ids_for_generation(inputs_tensor, model_kwargs)

    def prepare_inputs_for_generation(self, input_ids: torch.LongTensor, next_sequence_length: int | None = None,
                                      cache: Any = None, attention_mask: torch.Tensor | None = None,
                                      inputs_embeds: torch.Tensor | None = None,
                                      is_first_iteration: bool | None = False, **kwargs: Any) -> dict:
        inputs = super().prepare_inputs_for_generation(
            input_ids, next_sequence_length=next_sequence_length, cache=cache, attention_mask=attention_mask,
            inputs_embeds=inputs_embeds, is_first_iteration=is_first_iteration, **kwargs)
        cache = inputs.get("cache")
        if not is_first_iteration and cache is not None and cache.get_seq_length() > 0:
            # Decoding steps hold no image tokens: without images they are text-only (and compilable).
            inputs.pop("images", None)
        if inputs.get("images") and inputs.get("attention_mask") is None and inputs.get("cache") is None:
            # generate() drops an all-ones mask; without a cache (use_cache=False) transformers would then read
            # the compressed image position ids as packed samples. generate()'s rows are one sample each.
            shape = (inputs["inputs_embeds"] if inputs.get("inputs_embeds") is not None else inputs["input_ids"]).shape
            inputs["attention_mask"] = torch.ones(shape[:2], dtype=torch.long, device=self.device)
        return inputs

    def _get_logits_processor(self, generation_config: Any, *args: Any, **kwargs: Any) -> Any:
        # A generated image token would be a placeholder without an image (the next step, or prompt-lookup
        # and assisted candidates copied from the prompt, would fail the token count): never sample it.
        processors = super()._get_logits_processor(generation_config, *args, **kwargs)
        if self.config.image_token_id not in (generation_config.suppress_tokens or []):
            device = kwargs.get("device") or self.device
            processors.append(SuppressTokensLogitsProcessor([self.config.image_token_id], device=device))
        return processors

    def _expand_inputs_for_generation(self, expand_size: int = 1, is_encoder_decoder: bool = False,
                                      input_ids: torch.LongTensor | None = None,
                                      **model_kwargs: Any) -> tuple[torch.LongTensor, dict[str, Any]]:
        # Beam search and num_return_sequences repeat each sample; its images must be repeated with it,
        # and generate() only repeats top-level tensors (images is a dict with one row per image).
        images = model_kwargs.pop("images", None)
        if images and expand_size > 1:
            image_mask = self._generation_image_mask(input_ids, {**model_kwargs, "images": images})
            if image_mask is not None:
                images = expand_images(images, self.images_per_sample(image_mask, images), expand_size)
        input_ids, model_kwargs = super()._expand_inputs_for_generation(
            expand_size=expand_size, is_encoder_decoder=is_encoder_decoder, input_ids=input_ids, **model_kwargs)
        if images is not None:
            model_kwargs["images"] = images
        return input_ids, model_kwargs


def register_auto_classes() -> None:
    """Make ``AutoConfig``, ``AutoModelForCausalLM`` and ``AutoModelForImageTextToText`` (the class
    ``pipeline("image-text-to-text")`` loads) know the ``mova`` model type (idempotent)."""
    try:
        AutoConfig.register("mova", MovaConfig)
    except ValueError:
        pass
    for auto in (AutoModelForCausalLM, AutoModelForImageTextToText):
        try:
            auto.register(MovaConfig, MovaForCausalLM)
        except ValueError:
            pass
