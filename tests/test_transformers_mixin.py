"""``MovaForCausalLM`` under transformers' own ``ModelTesterMixin`` (``tests/test_modeling_common.py`` of the
installed release, fetched from PyPI by :mod:`tests.hf_common_tests`), text-only and with images.

The mixin runs in full with images (:class:`TestMovaWithImages`); the tests that do not apply are in
:data:`SKIPPED` / :data:`SKIPPED_WITH_IMAGES` with their reasons (the rest of the skips are the mixin's own:
no accelerator, no MoE, ...). Text-only (:class:`TestMovaTextOnly`), only the tests whose outcome depends on
the inputs run again (:data:`TEXT_ONLY`): weights, configs and saving are the same either way.
"""

from __future__ import annotations

import copy
import functools
import unittest

import torch

from mova import MovaForCausalLM
from mova.model.builder import build_model
from tests.conftest import random_image, tiny_model_config
from tests.hf_common_tests import load_modeling_common

common = load_modeling_common()


class MovaModelTester:
    """Builds the tiny Mova config and inputs the mixin asks for; ``with_images`` adds an image per sample."""

    def __init__(self, parent: unittest.TestCase, with_images: bool):
        self.parent, self.with_images = parent, with_images
        torch.manual_seed(0)
        cfg = tiny_model_config()
        cfg.experts = [e for e in cfg.experts if e.family in ("sam", "layoutlmv3")]  # a compressed scheme + HF
        model, self.processor = build_model(cfg, load_weights=False)
        self.config = model.config
        # As a user's config is before loading: no attention implementation requested (the mixin then sets
        # output_attentions with eager attention itself).
        self.config._attn_implementation_internal = None
        self.config.text_config._attn_implementation_internal = None
        if not with_images:
            # The mixin pads batches with random ids below 5, where the tiny tokenizer has <image>: a text-only
            # model under test gets its image token at the end of the vocabulary, where no input reaches.
            self.config.image_token_id = self.config.text_config.vocab_size - 1
        self.batch_size, self.seq_length, self.is_training = 2, None, True
        self.vocab_size = self.config.text_config.vocab_size
        self.hidden_size = self.config.text_config.hidden_size
        self.num_hidden_layers = self.config.text_config.num_hidden_layers
        self.num_attention_heads = self.config.text_config.num_attention_heads

    def prepare_config_and_inputs_for_common(self):
        if self.with_images:
            batch = self.processor(["USER: <image> what is it? ASSISTANT:", "USER: <image> colour? ASSISTANT: red"],
                                   [random_image(0), random_image(1)])
        else:
            batch = self.processor(["USER: what is it? ASSISTANT:", "USER: a colour? ASSISTANT: red"])
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        if self.with_images:
            inputs["images"] = batch["images"]
        self.seq_length = inputs["input_ids"].shape[1]
        return copy.deepcopy(self.config), inputs


#: mixin test -> why it does not apply to Mova (both variants).
SKIPPED = {
    "test_model_base_model_prefix": "Mova has no headless base model (experts + fusion + a whole causal LM), so "
                                    "base_model is the model itself; the test's docstring allows this skip",
    "test_generation_tester_mixin_inheritance": "GenerationTesterMixin lives in tests/generation, which the "
                                                "release's source distribution does not ship; generate() with and "
                                                "without images is tested in tests/test_generation_modes.py",
    "test_gradient_checkpointing_enable_disable": "Mova checkpoints only the LLM's layers: the experts are frozen "
                                                  "and run without grad, so they keep no activations to recompute",
    "test_peft_gradient_checkpointing_enable_disable": "as test_gradient_checkpointing_enable_disable: the frozen "
                                                       "experts are not checkpointed",
    "test_torch_export": "torch.export of the image path is not supported (data-dependent image-token count); the "
                         "compilable decoding step is tested in tests/test_generation_modes.py",
}
#: mixin test -> why it does not apply with images (its inputs cannot carry the nested images dict).
SKIPPED_WITH_IMAGES = {
    "test_batching_equivalence": "the mixin slices top-level tensors per sample, not the images dict (one row per "
                                 "image); each sample alone vs the batch: tests/test_generation_modes.py",
    "test_eager_matches_sdpa_inference": "the mixin rebuilds inputs from input_ids alone (batch of 7), dropping the "
                                         "images; eager vs sdpa with images is tested in tests/test_hf_conventions.py",
}


#: the input-dependent mixin tests, run a second time with text-only inputs.
TEXT_ONLY = ("test_eager_matches_sdpa_inference", "test_batching_equivalence", "test_training",
             "test_hidden_states_output", "test_attention_outputs",
             "test_model_outputs_equivalence", "test_retain_grad_hidden_states_attentions",
             "test_resize_tokens_embeddings", "test_determinism")
INPUT_INDEPENDENT = "does not depend on the inputs (weights, config, saving): run once, in TestMovaWithImages"


def _skip(cls: type, reasons: dict[str, str]) -> type:
    for name, reason in reasons.items():
        setattr(cls, name, unittest.skip(reason)(lambda self: None))
    return cls


class _MovaMixinBase(common.ModelTesterMixin):
    all_model_classes = (MovaForCausalLM,)
    with_images = False
    test_torch_exportable = False
    _is_composite = True

    def setUp(self):
        self.model_tester = MovaModelTester(self, self.with_images)

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        # The mixin finds a causal LM's labels by its class name in transformers' own mapping; Mova's are the
        # ids themselves, as for any causal LM (the model masks the image slots).
        inputs = super()._prepare_for_class(inputs_dict, model_class, return_labels=return_labels)
        if return_labels and "labels" not in inputs:
            inputs["labels"] = inputs["input_ids"].clone()
        return inputs


@functools.partial(_skip, reasons={**{name: INPUT_INDEPENDENT for name in dir(common.ModelTesterMixin)
                                       if name.startswith("test_") and name not in TEXT_ONLY
                                       and callable(getattr(common.ModelTesterMixin, name))}, **SKIPPED})
class TestMovaTextOnly(_MovaMixinBase, unittest.TestCase):
    with_images = False
    # Text-only inputs never reach the fusion network (no image tokens), so its weights get no gradient here;
    # TestMovaWithImages checks that every parameter gets one.
    test_all_params_have_gradient = False


@functools.partial(_skip, reasons={**SKIPPED, **SKIPPED_WITH_IMAGES})
class TestMovaWithImages(_MovaMixinBase, unittest.TestCase):
    with_images = True
