"""The generation backend: batched == one at a time at every step's logits (Mova with images, a plain LM),
stop strings, per-sample seeded sampling, sharding and merging (the 2-process ``torchrun`` run is in
``tests/test_eval_suite.py``, which launches one for the generation call and the suite together).

The models are tiny and random, so greedy tokens are a weak check (padding or position bugs often leave
the argmax alone): every test compares the raw logits of every generated step, to 1e-4.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from mova.errors import ConfigError, UnknownNameError
from mova.inference import (
    SamplingParams,
    TransformersBackend,
    build_prompts,
    generate_answers,
    generate_from_prompts,
    load_backend,
)
from mova.inference.decoding import SeededSampler, truncate_at_stop
from mova.inference.sharding import merge_shards, shard
from mova.model.builder import build_model
from mova.presets import TINY_TOKENIZER
from tests.conftest import random_image, tiny_model_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mova_tiny():
    torch.manual_seed(0)
    model, processor = build_model(tiny_model_config(), load_weights=False)
    return model.eval(), processor


@pytest.fixture(scope="module")
def text_lm():
    tok = AutoTokenizer.from_pretrained(TINY_TOKENIZER)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      initializer_range=0.2)
    torch.manual_seed(6)
    return LlamaForCausalLM(cfg).eval(), tok


def assert_steps_match(batched, alone, label: str) -> None:
    """Same tokens and the same raw logits at every step the row generated (to 1e-4)."""
    assert batched.num_tokens == alone.num_tokens, label
    assert batched.step_logits.shape == alone.step_logits.shape == (alone.num_tokens, batched.step_logits.shape[1])
    diff = (batched.step_logits - alone.step_logits).abs().amax(-1)
    assert diff.max().item() < 1e-4, f"{label}: step logits differ by {diff.tolist()} when batched"
    assert batched.text == alone.text, label


def test_every_step_of_a_padded_mova_batch_matches_each_sample_alone(mova_tiny):
    model, processor = mova_tiny
    qs = ["What is this?", "Describe every object in the picture, its colour, size and place in detail.",
          "Count the shapes.", "A text-only question with no picture at all, somewhat long.", "Hi"]
    conversations = [[{"from": "human", "value": q}] for q in qs]
    images = [random_image(0), random_image(1, (40, 300)), [random_image(2, (500, 70)), random_image(5)], None,
              random_image(3)]
    batched = generate_answers(model, processor, conversations, images, batch_size=5, max_new_tokens=7,
                               return_step_logits=True, progress=False)
    assert len({len(x) for x in processor.tokenizer([c[0]["value"] for c in conversations]).input_ids}) > 1
    for i, (conv, image) in enumerate(zip(conversations, images)):
        alone = generate_answers(model, processor, [conv], [image], max_new_tokens=7, return_step_logits=True,
                                 progress=False)[0]
        assert alone.num_tokens == 7  # the check covers seven steps, not one
        assert_steps_match(batched[i], alone, f"sample {i}")


def test_every_step_of_a_padded_plain_lm_batch_matches_each_sample_alone(text_lm):
    model, tok = text_lm
    prompts = ["short", "a much longer question than the others, with many more tokens in it", "middle length one"]
    conversations = [[{"role": "user", "content": q}] for q in prompts]
    batched = generate_answers(model, tok, conversations, batch_size=3, max_new_tokens=8, return_step_logits=True,
                               progress=False)
    for i, conv in enumerate(conversations):
        alone = generate_answers(model, tok, [conv], max_new_tokens=8, return_step_logits=True, progress=False)[0]
        assert_steps_match(batched[i], alone, f"prompt {i}")
    # the recorded logits are each step's real logits: one forward pass over prompt + greedy answer gives them
    prompt = build_prompts(tok, conversations[1:2])[0]
    ids = [tok.bos_token_id] + tok(prompt, add_special_tokens=False).input_ids  # one start token, as in training
    answer = batched[1].step_logits.argmax(-1).tolist()
    with torch.no_grad():
        full = model(torch.tensor([ids + answer])).logits[0, len(ids) - 1:len(ids) - 1 + len(answer)]
    torch.testing.assert_close(batched[1].step_logits, full, rtol=0, atol=1e-4)


class StepCounter:
    """A logits processor that only counts the decoding steps that ran."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return scores


def test_stop_strings_end_each_row_and_keep_padded_logits_exact(text_lm):
    model, tok = text_lm
    prompts = ["USER: one ASSISTANT:", "USER: a longer prompt with more words ASSISTANT:", "USER: x ASSISTANT:"]
    free = generate_from_prompts(model, tok, prompts, max_new_tokens=12, return_details=True, progress=False)
    # a stop string taken from the middle of each free continuation, so each row stops at a known place
    stops = []
    for g in free:
        assert g.stop_reason == "length" and len(g.text) > 6
        stops.append(g.text[3:6])
    steps = StepCounter()
    got = generate_from_prompts(model, tok, prompts, max_new_tokens=12, stop=stops, return_step_logits=True,
                                progress=False, logits_processor=[steps])
    for i, (g, f) in enumerate(zip(got, free)):
        expected, found = truncate_at_stop(f.text, stops)
        assert found and g.text == expected.strip() and g.stop_reason == "stop" and g.finished
        assert g.num_tokens < 12
        alone = generate_from_prompts(model, tok, [prompts[i]], max_new_tokens=12, stop=stops,
                                      return_step_logits=True, progress=False)[0]
        assert_steps_match(g, alone, f"row {i}")
    # the batch stops early when every row has stopped: no step beyond the longest row
    assert steps.calls == max(g.num_tokens for g in got) < 12


def test_truncate_at_stop_picks_the_earliest_stop():
    assert truncate_at_stop("a\n\nQ: b The answer", ["The", "\n\n"]) == ("a", True)
    assert truncate_at_stop("no stop", ["\n\n", ""]) == ("no stop", False)


def test_seeded_sampling_is_per_sample(text_lm):
    """A seeded sample does not depend on its batch-mates, batch size or order; another seed changes it."""
    model, tok = text_lm
    prompts = ["USER: a ASSISTANT:", "USER: a much longer prompt here ASSISTANT:", "USER: b c ASSISTANT:"]
    kw = dict(max_new_tokens=8, do_sample=True, temperature=1.5, top_p=0.95, progress=False)
    together = generate_from_prompts(model, tok, prompts, batch_size=3, seed=3, **kw)
    one_by_one = [generate_from_prompts(model, tok, prompts, batch_size=1, seed=3, **kw)[i] for i in range(3)]
    assert together == one_by_one
    other = generate_from_prompts(model, tok, prompts, batch_size=3, seed=4, **kw)
    assert other != together


def test_seeded_sampler_draws_from_the_tempered_top_p_distribution():
    """The sampler's empirical frequencies follow softmax(logits / T) renormalised over the top-p set."""
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, -3.0]])
    temperature, top_p = 0.7, 0.8
    p = torch.softmax(logits[0] / temperature, -1).double()
    order = p.argsort(descending=True)
    keep, mass = [], 0.0
    for j in order.tolist():  # plain loop: the nucleus is the shortest prefix reaching top_p
        keep.append(j)
        mass += p[j].item()
        if mass >= top_p:
            break
    expected = torch.zeros_like(p)
    expected[keep] = p[keep] / p[keep].sum()
    rows = 4000  # one draw from each of 4000 samples' own generators
    sampler = SeededSampler(0, range(rows), temperature=temperature, top_p=top_p)
    out = sampler(torch.zeros(rows, 1, dtype=torch.long), logits.repeat(rows, 1))
    assert (torch.isfinite(out).sum(-1) == 1).all()
    counts = torch.bincount(out.argmax(-1), minlength=5).float()
    assert torch.allclose(counts / 4000, expected.float(), atol=0.03)
    assert counts[[j for j in range(5) if j not in keep]].sum() == 0


def test_shard_and_merge_cover_every_sample_once():
    order = [4, 0, 3, 1, 2, 6, 5]
    parts = [shard(order, r, 3) for r in range(3)]
    assert sorted(sum(parts, [])) == list(range(7))
    merged = merge_shards(7, [[(i, f"x{i}") for i in p] for p in parts])
    assert merged == [f"x{i}" for i in range(7)]
    with pytest.raises(RuntimeError, match="duplicated"):
        merge_shards(3, [[(0, "a"), (1, "b")], [(1, "b"), (2, "c")]])
    with pytest.raises(RuntimeError, match="came back from no process"):
        merge_shards(3, [[(0, "a")], [(2, "c")]])


def test_backend_interface_and_vllm_error(text_lm, tmp_path):
    model, tok = text_lm
    backend = TransformersBackend(model, tok, batch_size=2, progress=False)
    params = SamplingParams(max_new_tokens=5)
    direct = generate_from_prompts(model, tok, ["USER: hi ASSISTANT:"], max_new_tokens=5, progress=False)
    assert [g.text for g in backend.generate(["USER: hi ASSISTANT:"], params=params)] == direct
    conv = [[{"role": "user", "content": "hi"}]]
    assert backend.chat(conv, params=params)[0].text == generate_answers(model, tok, conv, max_new_tokens=5,
                                                                         progress=False)[0]
    with pytest.raises(UnknownNameError, match="generation backend"):
        load_backend(tmp_path, "nope")
    if shutil.which("vllm") is None:
        try:
            import vllm  # noqa: F401
        except ImportError:
            with pytest.raises(ConfigError, match="pip install vllm"):
                load_backend(tmp_path, "vllm")
