"""The label-position loss (:mod:`mova.model.label_loss`) against the model's own full-logits loss.

Both paths see the same random model and batch; the loss and every parameter's gradient must agree (the
full path is transformers' ``ForCausalLMLoss`` over ``[batch, length, vocab]`` logits, an independent
implementation). The LM head must see label positions only.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from mova.data.llava import LlavaDataset, MovaCollator, PackedCollator, read_records
from mova.model.builder import build_model
from mova.model.label_loss import chunked_cross_entropy, label_loss, label_positions, token_logprobs
from tests.conftest import tiny_model_config
from tests.llava_fixtures import write_llava_dataset


def _grads(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def _both(model: torch.nn.Module, batch: dict, num_items=None) -> tuple:
    """(loss, grads) of the full-logits path, then of :func:`label_loss`."""
    out = []
    for fn in (lambda: model(**batch, **({"num_items_in_batch": num_items} if num_items is not None else {})).loss,
               lambda: label_loss(model, batch, num_items)):
        model.zero_grad(set_to_none=True)
        loss = fn()
        loss.backward()
        out.append((loss.detach(), _grads(model)))
    return out


def _text_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      attn_implementation="sdpa")
    return LlamaForCausalLM(cfg)


def _text_batch(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 300, (3, 20), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0  # right padding
    mask[2, 9:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :6] = -100  # the prompts
    labels[1, :11] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.mark.parametrize("num_items", [None, 17])
def test_text_lm_loss_and_gradients_equal_the_full_logits_path(num_items):
    model = _text_model()
    (full_loss, full_grad), (ours_loss, ours_grad) = _both(model, _text_batch(), num_items)
    torch.testing.assert_close(ours_loss, full_loss, rtol=1e-5, atol=0)
    torch.testing.assert_close(ours_grad, full_grad, rtol=1e-4, atol=1e-7)


def test_the_lm_head_sees_label_positions_only():
    model = _text_model()
    batch = _text_batch()
    seen = []
    hook = model.lm_head.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[1]))
    label_loss(model, batch)
    hook.remove()
    # positions 5..18 predict a label in some row (row 0: labels 6..19); nothing before the first label
    assert seen == [len(label_positions(batch["labels"]))] == [14]


def test_chunks_and_token_logprobs_match_one_pass():
    torch.manual_seed(1)
    logits = torch.randn(50, 40, requires_grad=True)
    targets = torch.randint(0, 40, (50,))
    targets[::7] = -100
    whole = torch.nn.functional.cross_entropy(logits, targets, ignore_index=-100, reduction="sum")
    (g_whole,) = torch.autograd.grad(whole, logits)
    chunked = chunked_cross_entropy(logits, targets, chunk=8)
    (g_chunked,) = torch.autograd.grad(chunked, logits)
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=0)
    torch.testing.assert_close(g_chunked, g_whole, rtol=1e-6, atol=1e-8)
    t = targets.clamp(min=0)
    ref = torch.log_softmax(logits, -1).gather(1, t[:, None]).squeeze(1)
    ours = token_logprobs(logits, t, chunk=8)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
    w = torch.randn(50)
    torch.testing.assert_close(torch.autograd.grad((ours * w).sum(), logits)[0],
                               torch.autograd.grad((ref * w).sum(), logits)[0], rtol=1e-5, atol=1e-7)


@pytest.fixture(scope="module")
def vlm_samples(tmp_path_factory):
    data = write_llava_dataset(tmp_path_factory.mktemp("label_loss"), n=4, text_only=2)
    torch.manual_seed(0)
    model, processor = build_model(tiny_model_config(), load_weights=False)
    from mova.config import DataConfig

    ds = LlavaDataset(read_records(data), processor, DataConfig(data_path=str(data), image_folder=str(data.parent)),
                      "vicuna_v1", progress=False)
    return model, processor, [ds[i] for i in (0, 4, 1, 5)]


@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_mova_loss_and_gradients_equal_the_full_logits_path(vlm_samples, layout):
    model, processor, samples = vlm_samples
    model.train()
    model.requires_grad_(False)
    model.fusion.requires_grad_(True)
    model.language_model.requires_grad_(True)
    pad = processor.tokenizer.pad_token_id
    collate = MovaCollator(pad) if layout == "padded" else PackedCollator(pad, max_tokens=4096)
    batch = collate(samples)
    assert batch["images"]  # visual tokens in the batch: their positions must not reach the LM head
    (full_loss, full_grad), (ours_loss, ours_grad) = _both(model, batch)
    torch.testing.assert_close(ours_loss, full_loss, rtol=1e-5, atol=0)
    torch.testing.assert_close(ours_grad, full_grad, rtol=1e-4, atol=1e-7)
    seen = []
    hook = model.language_model.lm_head.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[1]))
    label_loss(model, batch)
    hook.remove()
    image_slots = int(model.image_token_mask(batch["input_ids"]).sum(-1).max())
    assert seen[0] <= batch["input_ids"].shape[1] - image_slots
