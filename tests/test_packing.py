"""Packed batches: same per-token logits and loss as padded ones, attention kept inside each sample."""

from __future__ import annotations

import functools

import pytest
import torch
import yaml

from mova.config import DataConfig, load_run_config
from mova.data.llava import LlavaDataset, MovaCollator, PackedCollator, read_records
from mova.model.builder import build_model
from mova.model.packing import flash_varlen_kwargs, packed_attention_inputs
from mova.trainers.stages import run_stage
from tests.conftest import tiny_model_config
from tests.llava_fixtures import tiny_recipe, write_llava_dataset


def _max_tokens(samples) -> int:
    """Rows that hold two of the longest (image) samples and a short (text-only) one, whatever the tokenizer.

    With 3 image and 2 text-only samples that makes two rows, the second one shorter (padded at its end).
    """
    lengths = sorted(len(s["input_ids"]) for s in samples)
    return 2 * lengths[-1] + lengths[0] + 4


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("packing")
    return write_llava_dataset(root, n=5, text_only=3)


@functools.cache
def _setup(data, scheme="share_by_row", attn="sdpa"):
    """Model, processor, samples and the padded batch's per-sample logits and loss (built once per case)."""
    torch.manual_seed(0)
    model, processor = build_model(tiny_model_config(sam_scheme=scheme, overrides=[f"attn_implementation={attn}"]),
                                   load_weights=False)
    cfg = DataConfig(data_path=str(data), image_folder=str(data.parent))
    ds = LlavaDataset(read_records(data), processor, cfg, "vicuna_v1", progress=False)
    # Image and text-only samples of different lengths, in an order that packing must rearrange.
    samples = [ds[i] for i in (0, 5, 1, 6, 2)]
    with torch.no_grad():
        ref = model.eval()(**MovaCollator(processor.tokenizer.pad_token_id)(samples))
    ref_logits = [ref.logits[i, :len(s["input_ids"])] for i, s in enumerate(samples)]
    return model, processor, samples, ref_logits, ref.loss


def _per_sample(collator: PackedCollator, samples, logits):
    """Each sample's logits cut out of the packed rows, in batch order."""
    rows = collator.pack([len(s["input_ids"]) for s in samples])
    out = [None] * len(samples)
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            n = len(samples[i]["input_ids"])
            out[i] = logits[r, at:at + n]
            at += n
    return out


def _packed(model, processor, samples, **overrides):
    """The packed batch's output, per-sample logits and the batch (``overrides`` replace its entries)."""
    collator = PackedCollator(processor.tokenizer.pad_token_id, max_tokens=_max_tokens(samples))
    batch = collator(samples)
    inputs = {k: v for k, v in {**batch, **overrides}.items() if v is not None or k == "attention_mask"}
    with torch.no_grad():
        out = model(**inputs)
    return out, _per_sample(collator, samples, out.logits), batch


def _worst(a_list, b_list) -> float:
    return max((a - b).abs().max().item() for a, b in zip(a_list, b_list))


@pytest.mark.parametrize("scheme,attn", [("full", "sdpa"), ("share_by_row", "sdpa"), ("share_by_row", "eager")])
def test_packed_batch_matches_padded_batch(data, scheme, attn):
    model, processor, samples, ref_logits, ref_loss = _setup(data, scheme, attn)
    out, packed_logits, batch = _packed(model, processor, samples)
    assert batch["input_ids"].shape[0] == 2  # several samples share a row
    assert batch["attention_mask"].sum() == sum(len(s["input_ids"]) for s in samples)
    for a, b in zip(ref_logits, packed_logits):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.loss, ref_loss, rtol=0, atol=1e-5)


@pytest.mark.parametrize("scheme", ["full", "share_by_row"])
def test_attention_across_samples_is_caught(data, scheme):
    model, processor, samples, ref_logits, _ = _setup(data, scheme)
    # Plain causal attention over the row (no sequence_ids, the row's 2D mask): later samples see earlier ones.
    _, packed_logits, _ = _packed(model, processor, samples, sequence_ids=None)
    worst = _worst(ref_logits, packed_logits)
    assert worst > 1e-3, f"samples attending across the boundary went unnoticed ({worst:.2e})"
    # transformers' own packed detection (no mask, boundaries where ids are not consecutive) is right only
    # when ids are consecutive; under share_by_row it cuts image blocks apart.
    _, packed_logits, _ = _packed(model, processor, samples, sequence_ids=None, attention_mask=None, use_cache=False)
    worst = _worst(ref_logits, packed_logits)
    if scheme == "full":
        assert worst < 1e-5
    else:
        assert worst > 1e-3, f"boundaries inferred from compressed ids went unnoticed ({worst:.2e})"


def test_packed_position_ids_restart_and_match_the_model(data):
    model, processor, samples, _, _ = _setup(data, "share_by_row")
    collator = PackedCollator(processor.tokenizer.pad_token_id, max_tokens=_max_tokens(samples))
    batch = collator(samples)
    rows = collator.pack([len(s["input_ids"]) for s in samples])
    for r, row in enumerate(rows):
        at = 0
        for k, i in enumerate(row):
            s = samples[i]
            n = len(s["input_ids"])
            pos = batch["position_ids"][r, at:at + n]
            assert pos[0] == 0 and (batch["sequence_ids"][r, at:at + n] == k).all()
            expected = model.compute_position_ids(s["input_ids"][None], None, s["images"])[0]
            assert torch.equal(pos, expected)
            assert batch["labels"][r, at] == -100  # no sample learns the next one's first token
            at += n
        assert (batch["sequence_ids"][r, at:] == -1).all() and (batch["attention_mask"][r, at:] == 0).all()
    with pytest.raises(ValueError, match="needs position_ids"):
        model(input_ids=batch["input_ids"], sequence_ids=batch["sequence_ids"], images=batch["images"])


def test_mask_formats():
    seq = torch.tensor([[0, 0, 1, 1, 1, -1], [0, 0, 0, 0, 0, 0]])
    sdpa = packed_attention_inputs(seq, "sdpa", torch.float32)["attention_mask"]
    assert sdpa.dtype == torch.bool and sdpa.shape == (2, 1, 6, 6)
    assert sdpa[0, 0, 3].tolist() == [False, False, True, True, False, False]  # own sample, causal
    assert sdpa[0, 0, 5].tolist() == [False] * 5 + [True]  # padding sees only itself (no NaN rows)
    assert torch.equal(sdpa[1, 0], torch.ones(6, 6, dtype=torch.bool).tril())
    eager = packed_attention_inputs(seq, "eager", torch.bfloat16)["attention_mask"]
    assert eager.dtype == torch.bfloat16 and torch.equal(eager == 0, sdpa)
    flash = flash_varlen_kwargs(seq)
    assert flash["cu_seq_lens_q"].tolist() == [0, 2, 5, 6, 12] and flash["max_length_q"] == 6


def test_run_stage_trains_with_packing(tmp_path, monkeypatch):
    """``data.packing`` reaches the trainer: its batches are packed rows (fewer rows than samples, no padding),
    and the first step's loss equals the padded run's on the same samples (packing changes the layout only)."""
    import mova.trainers.stages as stages

    seen: list[tuple[int, int, int]] = []  # (rows, samples, padding tokens) of every batch the trainer took
    real = stages.data_collator

    def spy(cfg, pad_token_id):
        collator = real(cfg, pad_token_id)

        def collate(samples):
            batch = collator(samples)
            seen.append((batch["input_ids"].shape[0], len(samples), int((batch["attention_mask"] == 0).sum())))
            return batch
        return collate

    monkeypatch.setattr(stages, "data_collator", spy)
    data = write_llava_dataset(tmp_path, n=8, text_only=4)
    first_loss = {}
    for packing in (True, False):
        seen.clear()
        cfg = tiny_recipe(data, tmp_path, stage="sft", data_extra={"packing": packing, "packing_max_tokens": 1024},
                          max_steps=3, save_steps=0, output_dir=str(tmp_path / f"run-{packing}"),
                          learning_rate=0.0)
        path = tmp_path / "recipe.yaml"
        path.write_text(yaml.safe_dump(cfg))
        summary = run_stage(load_run_config(path))
        losses = list(summary["losses"].values())
        assert summary["global_step"] == 3 and len(losses) == 3
        assert all(torch.isfinite(torch.tensor(losses)))
        first_loss[packing] = losses[0]
        if packing:
            assert summary["config"]["data"]["packing"] is True
            assert all(rows < samples for rows, samples, _ in seen), seen  # several samples share a row
        else:
            assert any(pad > 0 for _, _, pad in seen), seen  # the padded layout pads
    # lr 0 keeps the weights fixed, so every step sees the same model: the packed mean token loss equals the
    # padded one over the same samples (same data order, same seed)
    assert first_loss[True] == pytest.approx(first_loss[False], rel=1e-5)


@pytest.mark.parametrize("branches", [False, True])
def test_sample_by_sample_sdpa_equals_eager_under_the_dense_mask(branches):
    """sdpa with the samples' spans (:func:`sample_sdpa_attention`) against eager attention under the dense
    mask, on a grouped-query Llama (SmolLM2's head layout): same logits and gradients, padding aside."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from mova.model.packing import SPANS_KWARG

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=100, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64)
    seq = torch.tensor([[0] * 7 + [1] * 9 + [2] * 5 + [-1] * 3, [0] * 12 + [1] * 10 + [-1] * 2])
    branch = torch.tensor([[0, 0, 0, 1, 1, 2, 2] + [0] * 4 + [1] * 3 + [2] * 2 + [0, 0, 1, 1, 2] + [0] * 3,
                           [0] * 5 + [1] * 4 + [2] * 3 + [0] * 3 + [1] * 7 + [0] * 2]) if branches else None
    ids = torch.randint(0, 100, seq.shape)
    positions = torch.arange(seq.shape[1]).expand_as(seq).contiguous()
    real = seq >= 0
    outs = []
    for impl in ("sdpa", "eager"):
        model = LlamaForCausalLM(cfg) if not outs else outs[0][0]
        model.config._attn_implementation = impl
        inputs = packed_attention_inputs(seq, impl, torch.float32, branch)
        assert (SPANS_KWARG in inputs) == (impl == "sdpa")
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=ids, position_ids=positions, **inputs).logits
        (logits[real] * torch.linspace(-1, 1, 100)).sum().backward()
        outs.append((model, logits[real].detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=1e-5, atol=1e-5)
    for a, b in zip(outs[0][2], outs[1][2], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
