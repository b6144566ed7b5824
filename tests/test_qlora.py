"""QLoRA: the LLM's linear layers in 4 bits (bitsandbytes), LoRA adapters trained on top, the final model saved
with the adapters merged into the dequantized weights; and the errors where 4 bits cannot run.

bitsandbytes >= 0.46 runs 4-bit on CPU, so these tests run on the CPU; on a GPU they run on it."""

from __future__ import annotations

import sys

import bitsandbytes as bnb  # setup.py's dev extra installs it: a test that needs it fails rather than skips
import pytest
import torch
from torch import nn

from mova.config import LoraConfig, load_run_config
from mova.errors import ConfigError
from mova.model.policy import CAUSAL_LM, dequantize_linears_4bit, load_policy, require_bitsandbytes
from tests.conftest import save_tiny_text_lm

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def lm_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qlora_lm")
    save_tiny_text_lm(folder, seed=3)
    return folder


def _qlora(**kw):
    return LoraConfig(r=4, alpha=8, dropout=0.0, quantization_bit=4, **kw)


def test_the_llm_becomes_4bit_with_trainable_adapters_and_computes_what_bnb_dequantizes(lm_folder):
    plain, _ = load_policy(str(lm_folder))
    model, _ = load_policy(str(lm_folder))
    model.to(DEVICE)
    model, counts = CAUSAL_LM.make_trainable(model, lora=_qlora())
    linear4 = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linear4) == sum(isinstance(m, nn.Linear) and n.split(".")[-1] != "lm_head"
                               for n, m in plain.named_modules())
    assert not any(isinstance(m, bnb.nn.Linear4bit) for n, m in model.named_modules() if n.endswith("lm_head"))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert counts["language_model"] == sum(p.numel() for p in model.parameters() if p.requires_grad)

    # reference: the plain model with each quantized weight replaced by bitsandbytes' own NF4 round trip
    ref = plain.to(DEVICE)
    for name, module in ref.named_modules():
        if isinstance(module, nn.Linear) and not name.endswith("lm_head"):
            q, state = bnb.functional.quantize_4bit(module.weight.data, quant_type="nf4", compress_statistics=True)
            module.weight.data = bnb.functional.dequantize_4bit(q, state).to(module.weight.dtype)
    ids = torch.randint(0, 100, (2, 12), device=DEVICE)
    with torch.no_grad():
        got = model(input_ids=ids).logits
        want = ref(input_ids=ids).logits
        assert not torch.allclose(want, load_policy(str(lm_folder))[0].to(DEVICE)(input_ids=ids).logits, atol=1e-3)
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)


def test_dpo_with_qlora_trains_the_adapters_and_saves_a_plain_merged_model(lm_folder, tmp_path):
    import json

    from transformers import AutoModelForCausalLM

    from mova.trainers.dpo import run_dpo

    rows = [{"prompt": f"Question {i}: is {w} safe to do?\n", "chosen": f"Yes, {w} is fine.",
             "rejected": f"I will not talk about {w}."}
            for i, w in enumerate(["cooking", "running", "reading", "painting", "swimming", "singing"])]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_run_config(None, [
        f"init_from={lm_folder}", f"data.data_path={data}", "data.template=raw", f"train.output_dir={tmp_path / 'run'}",
        "train.max_steps=6", "train.learning_rate=1e-2", "train.per_device_train_batch_size=4",
        "train.logging_steps=1", "train.report_to=[]", "train.save_steps=0", "train.warmup_ratio=0.0",
        "train.lora.r=4", "train.lora.alpha=8", "train.lora.quantization_bit=4", "dpo.reference=adapters_off",
        f"train.use_cpu={DEVICE == 'cpu'}"], stage="dpo")
    summary = run_dpo(cfg)
    losses = [summary["losses"][k] for k in sorted(summary["losses"], key=int)]
    assert losses[-1] < losses[0], losses
    final = AutoModelForCausalLM.from_pretrained(summary["final_model"])
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in final.modules())
    start = AutoModelForCausalLM.from_pretrained(lm_folder)
    changed = [n for (n, a), b in zip(final.named_parameters(), start.parameters()) if not torch.equal(a, b)]
    assert any("q_proj" in n for n in changed)


def test_merging_dequantizes_to_the_trained_models_function(lm_folder):
    model, _ = load_policy(str(lm_folder))
    model.to(DEVICE)
    model, _ = CAUSAL_LM.make_trainable(model, lora=_qlora())
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.05)  # adapters that change the function
    ids = torch.randint(0, 100, (2, 10), device=DEVICE)
    with torch.no_grad():
        before = model(input_ids=ids).logits
        merged = CAUSAL_LM.merge_adapters(model)
        after = merged(input_ids=ids).logits
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in merged.modules())
    assert all(type(m) is nn.Linear for n, m in merged.named_modules() if n.endswith("q_proj"))
    # merged in full precision: the function the 4-bit model with adapters computed
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    assert dequantize_linears_4bit(merged) == 0


def test_recipes_that_cannot_use_4bit_fail_at_once(lm_folder, tmp_path, monkeypatch):
    model, _ = load_policy(str(lm_folder))
    with pytest.raises(ConfigError, match=r"needs train\.lora\.r > 0"):
        CAUSAL_LM.make_trainable(model, lora=LoraConfig(r=0, quantization_bit=4))
    with pytest.raises(ConfigError, match=r"needs train\.lora\.merge=true"):
        CAUSAL_LM.make_trainable(model, lora=_qlora(merge=False))
    with pytest.raises(ConfigError, match=r"lora\.quantization_bit: expected one of 4 or null, got 8"):
        load_run_config(None, ["train.lora.quantization_bit=8"])
    with pytest.raises(ConfigError, match=r"ZeRO-3"):
        from mova.trainers.stages import training_arguments

        training_arguments(load_run_config(None, ["train.lora.r=4", "train.lora.quantization_bit=4",
                                                  "train.deepspeed=scripts/zero3.json"]))


def test_without_bitsandbytes_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # what an environment without the package gives
    with pytest.raises(ConfigError, match=r"needs bitsandbytes, which is not installed.*pip install"):
        require_bitsandbytes("cpu")


def test_a_device_bitsandbytes_cannot_quantize_on_is_named(monkeypatch):
    def no_kernel(*args, **kwargs):  # what bitsandbytes < 0.46 answers on a machine without CUDA
        raise NotImplementedError("no 4-bit kernel for this device")

    monkeypatch.setattr(bnb.functional, "quantize_4bit", no_kernel)
    with pytest.raises(ConfigError, match=r"cannot quantize to 4 bits on cpu here \(NotImplementedError: no 4-bit"):
        require_bitsandbytes("cpu")
