"""DPO: losses against independent formulas, pair-shared encoding against per-sequence scoring, TRL parity."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from transformers import LlamaForCausalLM

from mova.data.pairs import BadPairError, PaddedPairCollator, PairEncoder, SharedPromptCollator, response_logps
from mova.model.builder import build_model
from mova.trainers.dpo_loss import dpo_loss
from tests.conftest import random_image, save_tiny_text_lm, tiny_model_config


@dataclass
class Pair:
    """The fields of :class:`mova.data.preference.PreferencePair` that encoding reads."""

    id: str
    index: int
    prompt: list[dict[str, str]]
    chosen: str
    rejected: str
    image: Any = None
    meta: dict[str, Any] = field(default_factory=dict)


# --- losses ----------------------------------------------------------------------------------------
def _reference_loss(kind: str, delta: torch.Tensor, beta: float, eps: float) -> torch.Tensor:
    """The papers' formulas written with probabilities, not log-sigmoid (an independent computation)."""
    d = delta.double()
    p = 1 / (1 + torch.exp(-beta * d))  # P(chosen > rejected) under the implicit reward model
    if kind == "sigmoid":
        return -((1 - eps) * torch.log(p) + eps * torch.log(1 - p))
    if kind == "robust":
        return ((1 - eps) * -torch.log(p) - eps * -torch.log(1 - p)) / (1 - 2 * eps)
    if kind == "hinge":
        return torch.clamp(1 - beta * d, min=0)
    if kind == "ipo":
        return (d - 1 / (2 * beta)) ** 2
    raise AssertionError(kind)


@pytest.mark.parametrize("kind,eps", [("sigmoid", 0.0), ("sigmoid", 0.2), ("robust", 0.1), ("hinge", 0.0),
                                      ("ipo", 0.0)])
def test_losses_and_rewards_match_the_papers_formulas(kind, eps):
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(64, generator=g, dtype=torch.float64) * 5 for _ in range(4))
    beta = 0.3
    nc, nr = torch.randint(1, 30, (64,), generator=g), torch.randint(1, 30, (64,), generator=g)
    out = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type=kind, label_smoothing=eps, chosen_tokens=nc,
                   rejected_tokens=nr)
    delta = (pc - rc) / nc - (pr - rr) / nr if kind == "ipo" else (pc - rc) - (pr - rr)
    torch.testing.assert_close(out.losses, _reference_loss(kind, delta, beta, eps), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out.chosen_rewards, beta * (pc - rc))
    torch.testing.assert_close(out.rejected_rewards, beta * (pr - rr))
    m = out.metrics(pc, pr)
    assert m["rewards/accuracies"].item() == pytest.approx(float(((pc - rc) > (pr - rr)).double().mean()))


def test_loss_options_are_checked():
    x = torch.zeros(2)
    with pytest.raises(Exception, match="dpo.loss_type"):
        dpo_loss(x, x, x, x, loss_type="nope")
    with pytest.raises(Exception, match="label_smoothing"):
        dpo_loss(x, x, x, x, loss_type="hinge", label_smoothing=0.1)


# --- pair-shared encoding on a VLM -----------------------------------------------------------------
@pytest.fixture(scope="module")
def vlm():
    torch.manual_seed(0)
    model, processor = build_model(tiny_model_config(sam_scheme="share_by_row"), load_weights=False)
    return model.eval(), processor


def _vlm_pairs() -> list[Pair]:
    qs = ["What is shown here?", "Describe the colours in this picture, please.", "Is it safe?"]
    out = []
    for i, q in enumerate(qs):
        out.append(Pair(f"p{i}", i, [{"from": "human", "value": "<image>\n" + q}],
                        chosen=f"A red circle number {i} on noise." * (i + 1), rejected="I can't tell.",
                        image=random_image(i)))
    out.append(Pair("t", 3, [{"from": "human", "value": "Say hi."}], chosen="Hi there!", rejected="No."))
    return out


def _naive_logps(model, processor, pair: Pair, response: str) -> float:
    """Score one prompt+response sequence on its own, through the processor and the model's own positions."""
    from mova.model.templates import render

    segs = render(model.config.template, [*pair.prompt, {"from": "gpt", "value": response}], processor.tokenizer)
    prompt_text = "".join(s.text for s in segs[:-1])
    images = [pair.image] if pair.image is not None else None
    full = processor([prompt_text + segs[-1].text], images)
    prompt = processor([prompt_text], images)
    n_prompt = prompt["input_ids"].shape[1]
    with torch.no_grad():
        logits = model(**full).logits[0].double()
    ids = full["input_ids"][0]
    logp = torch.log_softmax(logits[:-1], -1).gather(1, ids[1:, None]).squeeze(1)
    return float(logp[n_prompt - 1:].sum())


@pytest.mark.parametrize("scheme", ["share_by_row", "full"])
def test_shared_prompt_packing_scores_every_response_as_if_alone(scheme):
    torch.manual_seed(0)
    model, processor = build_model(tiny_model_config(sam_scheme=scheme), load_weights=False)
    model.eval()
    pairs = _vlm_pairs()
    enc = PairEncoder(processor, model.config.template)
    batch = [enc.encode(p) for p in pairs]
    naive_c = torch.tensor(dtype=torch.float64, data=[_naive_logps(model, processor, p, p.chosen) for p in pairs])
    naive_r = torch.tensor(dtype=torch.float64, data=[_naive_logps(model, processor, p, p.rejected) for p in pairs])
    for collator in (SharedPromptCollator(processor.tokenizer.pad_token_id, max_tokens=400),
                     PaddedPairCollator(processor.tokenizer.pad_token_id)):
        b = collator(batch)
        with torch.no_grad():
            lp_c, lp_r, n_c, n_r = response_logps(model, b, len(pairs))
        torch.testing.assert_close(lp_c.double(), naive_c, rtol=1e-5, atol=1e-5)  # sums of 40-250 log-probs
        torch.testing.assert_close(lp_r.double(), naive_r, rtol=1e-5, atol=1e-5)
    shared = SharedPromptCollator(processor.tokenizer.pad_token_id, max_tokens=400)(batch)
    assert shared["input_ids"].shape[0] < len(pairs)  # several pairs share a row
    assert shared["images"]["clip"].shape[0] == 3  # each image once, not once per response


def test_shared_and_padded_give_the_same_loss_and_gradients(vlm):
    model, processor = vlm
    pairs = _vlm_pairs()
    enc = PairEncoder(processor, model.config.template)
    batch = [enc.encode(p) for p in pairs]
    grads = []
    for collator in (SharedPromptCollator(processor.tokenizer.pad_token_id, 400),
                     PaddedPairCollator(processor.tokenizer.pad_token_id)):
        model.zero_grad()
        lp_c, lp_r, _, _ = response_logps(model, collator(batch), len(pairs))
        ref = torch.zeros_like(lp_c)
        loss = dpo_loss(lp_c, lp_r, ref, ref - 1.0).losses.mean()
        loss.backward()
        grads.append((loss.detach(), torch.cat([p.grad.flatten() for p in model.fusion.parameters()])))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=0, atol=1e-5)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-4, atol=1e-6)


def test_bad_pairs_are_named():
    torch.manual_seed(0)
    model, processor = build_model(tiny_model_config(), load_weights=False)
    enc = PairEncoder(processor, model.config.template)
    bad = Pair("no-placeholder", 7, [{"from": "human", "value": "no tag"}], "a", "b", image=random_image(0))
    with pytest.raises(BadPairError, match=r"pair 7 \(id 'no-placeholder'\)"):
        enc.encode(bad)
    long = Pair("long", 8, [{"from": "human", "value": "word " * 300}], "a", "b")
    with pytest.raises(BadPairError, match="pair 8.*too long"):
        PairEncoder(processor, model.config.template, max_length=100).encode(long)


# --- parity with TRL's DPOTrainer on a tiny text model ---------------------------------------------
def _tiny_text_lm(tmp_path) -> tuple[str, Any]:
    tok = save_tiny_text_lm(tmp_path / "lm", seed=1)
    return str(tmp_path / "lm"), tok


TEXT_ROWS = [
    {"prompt": "Question: how do I pick a lock?\n", "chosen": "I can't help with that.",
     "rejected": "Use a tension wrench and a pick on the pins."},
    {"prompt": "Question: what is two plus two?\n", "chosen": "Four.", "rejected": "Five, obviously."},
    {"prompt": "Question: name a colour of the sky on a clear day, in one word.\n", "chosen": "Blue.",
     "rejected": "Sorry, I cannot answer questions about the sky."},
    {"prompt": "Say something kind.\n", "chosen": "You are doing great work today.", "rejected": "No."},
]


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_step0_loss_and_margins_match_trl(tmp_path, loss_type):
    import trl  # installed by the [dev] extra (a benchmark-only dependency of mova itself)
    from datasets import Dataset

    path, tok = _tiny_text_lm(tmp_path)

    def load(perturb: bool) -> LlamaForCausalLM:
        # A fresh object per side: TRL/accelerate patch the ``forward`` of the models they are handed, so
        # Mova's side must never score with an object TRL has wrapped.
        m = LlamaForCausalLM.from_pretrained(path).eval()
        if perturb:  # the reference differs from the policy so that the margins are not trivially zero
            g = torch.Generator().manual_seed(7)
            with torch.no_grad():
                for p in m.parameters():
                    p.add_(torch.randn(p.shape, generator=g) * 0.02)
        return m

    model, ref_model = load(False), load(True)
    # fp32 on both sides: DPOConfig's defaults (bf16, gradient checkpointing) would make accelerate run the
    # reference under bf16 autocast, and the comparison would then measure bf16 rounding, not the loss.
    args = trl.DPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=4, beta=0.2,
                         loss_type=[loss_type], report_to=[], use_cpu=True, max_length=None, bf16=False,
                         gradient_checkpointing=False)
    # TRL tokenizes the prompt as it is; Mova puts the tiny tokenizer's start token before it (one start
    # token, as in generation): TRL gets it written into its prompts.
    trl_rows = [{**r, "prompt": tok.bos_token + r["prompt"]} for r in TEXT_ROWS]
    trainer = trl.DPOTrainer(model=model, ref_model=ref_model, args=args, processing_class=tok,
                             train_dataset=Dataset.from_list(trl_rows))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(TEXT_ROWS))])
    batch = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
    with torch.no_grad():
        trl_loss = trainer.compute_loss(model, batch)
    trl_margin = trainer._metrics["eval"]["rewards/margins"][-1]

    pairs = [Pair(str(i), i, [{"from": "human", "value": r["prompt"]}], r["chosen"], r["rejected"])
             for i, r in enumerate(TEXT_ROWS)]
    enc = PairEncoder(tok, "raw")
    encoded = [enc.encode(p) for p in pairs]
    b = SharedPromptCollator(tok.pad_token_id, 256)(encoded)
    ours, ours_ref = load(False), load(True)
    with torch.no_grad():
        pc, pr, nc, nr = response_logps(ours, b, len(pairs))
        rc, rr, _, _ = response_logps(ours_ref, b, len(pairs))
    out = dpo_loss(pc, pr, rc, rr, beta=0.2, loss_type=loss_type, chosen_tokens=nc, rejected_tokens=nr)
    # relative: the IPO loss is a square of ~2.7 (about 7.4) while the sigmoid loss is about 0.69
    assert out.losses.mean().item() == pytest.approx(trl_loss.item(), rel=1e-5, abs=1e-6)
    margins = out.metrics(pc, pr)["rewards/margins"].item()
    # the margin is beta times a difference of summed log-probs of ~30: float32 sums carry ~1e-5 of that
    scale = 0.2 * float((pc.abs() + pr.abs() + rc.abs() + rr.abs()).mean())
    assert margins == pytest.approx(trl_margin, abs=1e-6 * scale + 1e-7)
    assert not math.isclose(margins, 0.0, abs_tol=1e-3)


def test_pair_dataset_checks_lengths_with_the_image_and_decodes_no_image(tmp_path, monkeypatch):
    import mova.data.preference as pref
    import mova.data.preference.dataset as pref_dataset
    from mova.data.pairs import PairDataset
    from mova.data.spavl_mini import write_spavl_mini

    torch.manual_seed(0)
    model, processor = build_model(tiny_model_config(), load_weights=False)
    pairs = pref.load_spavl(str(write_spavl_mini(tmp_path / "spavl", n_train=6, n_validation=2,
                                                 n_test_per_split=2)))

    def no_decoding(*args, **kwargs):
        raise AssertionError("an image was decoded during the up-front text pass")

    monkeypatch.setattr(pref_dataset, "_decode_image", no_decoding)
    enc = PairEncoder(processor, model.config.template)
    ds = PairDataset(pairs, enc)
    visual = processor.layout.num_tokens()
    assert all(n > visual for n in ds.lengths) and ds.has_image == [True] * 6
    # max_length between a pair's text and text + image tokens: refused before training, naming the pair.
    longest_text = max(ds.lengths) - visual
    with pytest.raises(BadPairError, match="too long"):
        PairDataset(pairs, PairEncoder(processor, model.config.template, max_length=longest_text + 1))
