"""Reward modelling: losses against their formulas, pair scoring against per-sequence scoring, strength
columns, label flipping, contrastive losses against loops, MetaRM's difference loss and ascent step."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from mova.data.pairs import PaddedPairCollator, PairEncoder, SharedPromptCollator
from mova.data.strength import load_strength, strength_columns, write_strength
from mova.errors import ConfigError, DataError
from mova.model.builder import build_model
from mova.rl.reward_model import (
    RewardModel,
    last_token_index,
    load_reward_model,
    pair_scores,
    score_texts,
)
from mova.trainers.metarm import MetaPrompt, MetaRmStep, MetaSet, difference_loss, sample_meta_set
from mova.trainers.rm_loss import rm_loss, simcse_loss, sinkhorn, swav_loss, weakest_pairs
from tests.conftest import random_image, save_tiny_text_lm, tiny_model_config
from tests.test_dpo import TEXT_ROWS, Pair


# --- losses against the paper's formulas ---------------------------------------------------------------
def _reference(kind: str, d: np.ndarray, u: np.ndarray, alpha: float, scale: float) -> np.ndarray:
    """Written with probabilities in numpy, element by element (independent of the torch code)."""
    out = []
    for di, ui in zip(d.tolist(), u.tolist()):
        p = 1 / (1 + math.exp(-(di - scale * ui)))
        if kind == "bt":
            out.append(-math.log(p))
        elif kind == "label_smoothing":
            out.append(-(1 - alpha) * math.log(p) - alpha * math.log(1 - p))
        elif kind == "soft_negative":
            a = alpha if ui < 0 else 0.0
            out.append(-(1 - a) * math.log(p) - a * math.log(1 - p))
    return np.array(out)


@pytest.mark.parametrize("kind,alpha,scale", [("bt", 0.0, 0.0), ("bt", 0.0, 1.0), ("bt", 0.0, 0.5),
                                              ("label_smoothing", 0.1, 0.0), ("label_smoothing", 0.3, 1.0),
                                              ("soft_negative", 0.2, 0.0), ("soft_negative", 0.4, 1.0)])
def test_losses_match_their_formulas(kind, alpha, scale):
    g = torch.Generator().manual_seed(1)
    rc, rr, u = (torch.randn(200, generator=g, dtype=torch.float64) * 3 for _ in range(3))
    out = rm_loss(rc, rr, loss=kind, label_smoothing=alpha, strength=u, margin_scale=scale)
    expected = _reference(kind, (rc - rr).numpy(), u.numpy(), alpha, scale)
    np.testing.assert_allclose(out.losses.numpy(), expected, rtol=1e-7, atol=1e-9)
    m = out.metrics()
    assert m["rewards/accuracies"].item() == pytest.approx(float(np.mean((rc > rr).numpy())))
    assert m["rewards/margins"].item() == pytest.approx(float((rc - rr).mean()), rel=1e-6)
    assert m["rewards/chosen"].item() == pytest.approx(float(rc.mean()), rel=1e-6)


def test_soft_negative_smooths_only_negative_strength_pairs():
    rc, rr = torch.tensor([2.0, 2.0]), torch.tensor([0.0, 0.0])
    out = rm_loss(rc, rr, loss="soft_negative", label_smoothing=0.3, strength=torch.tensor([-0.5, 0.5]))
    bt = rm_loss(rc, rr).losses
    assert out.losses[1] == pytest.approx(bt[1].item())
    assert out.losses[0] > bt[0]


def test_loss_options_are_checked():
    x = torch.zeros(3)
    with pytest.raises(Exception, match="rm.loss"):
        rm_loss(x, x, loss="nope")
    with pytest.raises(ConfigError, match="strength"):
        rm_loss(x, x, margin_scale=1.0)
    with pytest.raises(ConfigError, match="strength"):
        rm_loss(x, x, loss="soft_negative", label_smoothing=0.1)
    with pytest.raises(ConfigError, match="label_smoothing"):
        rm_loss(x, x, loss="label_smoothing", label_smoothing=0.6)


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 0.4])
def test_flipping_selects_exactly_the_weakest_fraction(fraction):
    g = torch.Generator().manual_seed(3)
    s = torch.randn(97, generator=g, dtype=torch.float64)
    picked = weakest_pairs(s, fraction)
    k = round(fraction * 97)
    assert picked.numel() == k == len(set(picked.tolist()))
    expected = set(np.argsort(s.numpy(), kind="stable")[:k].tolist())
    assert set(picked.tolist()) == expected
    rest = sorted(set(range(97)) - set(picked.tolist()))
    if k:
        assert s[picked].max() <= s[rest].min()


# --- contrastive auxiliaries against loops ------------------------------------------------------------------
def test_simcse_matches_a_loop():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    t = 0.2
    total = 0.0
    for i in range(6):
        sims = [float(a[i] @ b[j] / (a[i].norm() * b[j].norm())) / t for j in range(6)]
        total += -(sims[i] - math.log(sum(math.exp(x) for x in sims)))
    assert simcse_loss(a, b, t).item() == pytest.approx(total / 6, rel=1e-5)


def _sinkhorn_numpy(scores: np.ndarray, eps: float, iters: int) -> np.ndarray:
    q = np.exp(scores / eps).T
    q /= q.sum()
    k, n = q.shape
    for _ in range(iters):
        q /= q.sum(axis=1, keepdims=True) * k
        q /= q.sum(axis=0, keepdims=True) * n
    return (q * n).T


def test_sinkhorn_and_swav_match_numpy():
    g = torch.Generator().manual_seed(5)
    v1, v2, c = torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g), torch.randn(3, 4, generator=g)
    scores = torch.randn(8, 3, generator=g) * 0.3
    q = sinkhorn(scores, 0.5, 3)
    np.testing.assert_allclose(q.numpy(), _sinkhorn_numpy(scores.double().numpy(), 0.5, 3), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(q.sum(1).numpy(), np.ones(8), rtol=1e-5)  # a distribution per sample

    def norm(x):
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    cn = norm(c.double().numpy())
    s1, s2 = norm(v1.double().numpy()) @ cn.T, norm(v2.double().numpy()) @ cn.T
    q1, q2 = _sinkhorn_numpy(s1, 0.5, 3), _sinkhorn_numpy(s2, 0.5, 3)
    t = 0.1

    def log_softmax(x):
        x = x / t
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    expected = np.mean(-(q2 * log_softmax(s1)).sum(-1) - (q1 * log_softmax(s2)).sum(-1)) / 2
    assert swav_loss(v1, v2, c, t, 0.5, 3).item() == pytest.approx(float(expected), rel=1e-4)


# --- the reward model on a text LM ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def text_rm(tmp_path_factory):
    root = tmp_path_factory.mktemp("rm_text")
    tok = save_tiny_text_lm(root / "lm", seed=1)
    torch.manual_seed(0)
    return RewardModel.from_backbone(AutoModelForCausalLM.from_pretrained(root / "lm")).eval(), tok, root


def _alone(rm, tok, prompt: str, response: str, start: bool = True) -> float:
    """The reward of one sequence scored alone: the head on the final hidden state of its last token (with
    ``start``, the tiny tokenizer's start token first, as Mova's encoders put it before every sequence)."""
    head = [tok.bos_token_id] if start else []
    ids = torch.tensor([head + tok(prompt + response + tok.eos_token, add_special_tokens=False).input_ids])
    with torch.no_grad():
        h = rm.backbone.model(input_ids=ids).last_hidden_state[0, -1]
        return float(h @ rm.score_head.weight[0] + rm.score_head.bias[0])


def test_scores_at_the_last_real_token_with_left_and_right_padding(text_rm):
    rm, tok, _ = text_rm
    texts = ["Hello there, how are you?", "Hi."]
    alone = [_alone(rm, tok, t, "", start=False) for t in texts]  # the tokenizer's own encoding, as below
    for side in ("left", "right"):
        tok.padding_side = side
        enc = tok([t + tok.eos_token for t in texts], return_tensors="pt", padding=True)
        with torch.no_grad():
            out = rm(**enc)
        assert out.values.shape == enc["input_ids"].shape
        np.testing.assert_allclose(out.scores.numpy(), alone, atol=1e-4)
    tok.padding_side = "right"
    assert last_token_index(torch.tensor([[0, 1, 1, 0], [1, 0, 0, 0]])).tolist() == [2, 0]


def test_shared_and_padded_pair_scores_equal_scoring_each_sequence_alone(text_rm):
    rm, tok, _ = text_rm
    pairs = [Pair(str(i), i, [{"from": "human", "value": r["prompt"]}], r["chosen"], r["rejected"])
             for i, r in enumerate(TEXT_ROWS)]
    enc = PairEncoder(tok, "raw")
    encoded = [enc.encode(p) for p in pairs]
    alone_c = [_alone(rm, tok, r["prompt"], r["chosen"]) for r in TEXT_ROWS]
    alone_r = [_alone(rm, tok, r["prompt"], r["rejected"]) for r in TEXT_ROWS]
    for collator in (SharedPromptCollator(tok.pad_token_id, 100), PaddedPairCollator(tok.pad_token_id)):
        with torch.no_grad():
            rc, rr, _, _ = pair_scores(rm, collator(encoded), len(pairs))
        np.testing.assert_allclose(rc.numpy(), alone_c, atol=1e-4)
        np.testing.assert_allclose(rr.numpy(), alone_r, atol=1e-4)
    assert SharedPromptCollator(tok.pad_token_id, 100)(encoded)["input_ids"].shape[0] < len(pairs)


def test_save_load_roundtrip_and_score_texts(text_rm, tmp_path):
    rm, tok, _ = text_rm
    prompts = [r["prompt"] for r in TEXT_ROWS]
    responses = [r["chosen"] for r in TEXT_ROWS]
    before = score_texts(rm, tok, prompts, responses, batch_size=3)
    np.testing.assert_allclose(before, [_alone(rm, tok, p, r) for p, r in zip(prompts, responses)], atol=1e-4)
    rm.save_pretrained(tmp_path / "rm", tok)
    assert (tmp_path / "rm" / "score_head.safetensors").is_file()
    loaded, tok2 = load_reward_model(tmp_path / "rm")
    np.testing.assert_allclose(score_texts(loaded, tok2, prompts, responses, batch_size=4), before, atol=1e-5)
    with pytest.raises(ConfigError, match="not a saved reward model"):
        load_reward_model(tmp_path)


# --- the reward model on a Mova VLM ---------------------------------------------------------------------
def test_vlm_pair_scores_equal_scoring_each_sequence_alone():
    from mova.model.templates import render

    torch.manual_seed(0)
    model, processor = build_model(tiny_model_config(), load_weights=False)
    rm = RewardModel.from_backbone(model).eval()
    pairs = [Pair("a", 0, [{"from": "human", "value": "<image>\nWhat is shown?"}], "A red circle.", "No idea.",
                  image=random_image(0)),
             Pair("b", 1, [{"from": "human", "value": "<image>\nIs it safe?"}], "Yes, it is a drawing.", "Maybe.",
                  image=random_image(1)),
             Pair("t", 2, [{"from": "human", "value": "Say hi."}], "Hi there!", "No.")]
    enc = PairEncoder(processor, model.config.template)
    encoded = [enc.encode(p) for p in pairs]

    def alone(pair, response):
        segs = render(model.config.template, [*pair.prompt, {"from": "gpt", "value": response}], processor.tokenizer)
        inputs = processor(["".join(s.text for s in segs)], [pair.image] if pair.image is not None else None)
        with torch.no_grad():
            return float(rm(**inputs).scores[0])

    for collator in (SharedPromptCollator(processor.tokenizer.pad_token_id, 400),
                     PaddedPairCollator(processor.tokenizer.pad_token_id)):
        with torch.no_grad():
            rc, rr, _, _ = pair_scores(rm, collator(encoded), len(pairs))
        np.testing.assert_allclose(rc.numpy(), [alone(p, p.chosen) for p in pairs], atol=1e-4)
        np.testing.assert_allclose(rr.numpy(), [alone(p, p.rejected) for p in pairs], atol=1e-4)


# --- preference strength --------------------------------------------------------------------------------
def test_strength_columns_and_file_roundtrip(tmp_path):
    g = torch.Generator().manual_seed(2)
    diffs = torch.randn(4, 9, generator=g, dtype=torch.float64)
    mean, std = strength_columns(diffs)
    for i in range(9):
        col = [float(diffs[m, i]) for m in range(4)]
        mu = sum(col) / 4
        assert mean[i].item() == pytest.approx(mu)
        assert std[i].item() == pytest.approx(math.sqrt(sum((x - mu) ** 2 for x in col) / 4))

    class Src:
        ids = [f"p{i}" for i in range(9)]

    path = write_strength(tmp_path / "s.jsonl", Src.ids, diffs)
    loaded = load_strength(path, Src())
    torch.testing.assert_close(loaded["strength_mean"], mean)
    Src.ids = [f"q{i}" for i in range(9)]
    with pytest.raises(DataError, match="row 0"):
        load_strength(path, Src())


# --- MetaRM ---------------------------------------------------------------------------------------------
def test_difference_loss_matches_a_loop():
    g = torch.Generator().manual_seed(4)
    s = torch.randn(3, 5, generator=g, dtype=torch.float64)
    expected = 0.0
    for p in range(3):
        tot = sum(1 / (1 + math.exp(-abs(float(s[p, i] - s[p, j])))) for i in range(5) for j in range(i + 1, 5))
        expected += 2 / 25 * tot
    assert difference_loss(s).item() == pytest.approx(expected / 3)


def test_metarm_ascent_increases_the_difference_loss_on_policy_samples(text_rm, tmp_path):
    rm, tok, root = text_rm
    policy = AutoModelForCausalLM.from_pretrained(root / "lm")
    prompts = [[{"from": "human", "value": r["prompt"]}] for r in TEXT_ROWS[:3]]
    path = sample_meta_set(policy, tok, prompts, tmp_path / "meta.jsonl", k=3, max_new_tokens=6, seed=0)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 3 and all(len(r["responses"]) == 3 for r in rows)
    meta = MetaSet([MetaPrompt(r["id"], r["prompt"], r["responses"]) for r in rows], PairEncoder(tok, "raw"))
    collator = SharedPromptCollator(tok.pad_token_id, 256)
    # The meta scores equal scoring each sampled response alone (the slot bookkeeping is right).
    with torch.no_grad():
        got = meta.scores(rm, collator, [0, 1, 2], "cpu")
    want = [[_alone(rm, tok, r["prompt"][0]["value"], s) for s in r["responses"]] for r in rows]
    np.testing.assert_allclose(got.numpy(), want, atol=1e-4)
    step = MetaRmStep(meta, collator, lr=1e-2, batch_size=3)
    theta = [p.detach().clone() for p in rm.parameters()]
    before, after = step.ascend(rm, [0, 1, 2])
    assert after > before
    step.restore()
    assert all(torch.equal(a, b) for a, b in zip(theta, rm.parameters()))
