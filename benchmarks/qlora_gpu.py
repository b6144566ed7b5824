"""QLoRA on a GPU: Mova's 4-bit LLM path (``train.lora.quantization_bit=4``) on a random Llama of about 0.6B
parameters in bf16, with no download and nothing of Mova's beyond the policy interface.

Checks and prints (one JSON object):

* the 4-bit model computes what bitsandbytes' own NF4 round trip of the weights computes (max logit difference);
* GPU memory of the weights, bf16 against 4-bit (+ adapters);
* LoRA training steps on one batch lower the loss, and their time;
* merging the adapters into the dequantized weights keeps the trained function (max logit difference).

    python benchmarks/qlora_gpu.py [--layers 8] [--width 2048] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--device", default="cuda")
    a = ap.parse_args()

    import bitsandbytes as bnb
    from transformers import LlamaConfig, LlamaForCausalLM

    from mova.config import LoraConfig
    from mova.model.policy import CAUSAL_LM

    dev = a.device
    cuda = dev.startswith("cuda")

    def allocated() -> int:
        if not cuda:
            return 0
        torch.cuda.synchronize()
        return torch.cuda.memory_allocated()
    cfg = LlamaConfig(vocab_size=32000, hidden_size=a.width, intermediate_size=int(a.width * 2.75),
                      num_hidden_layers=a.layers, num_attention_heads=a.width // 128,
                      num_key_value_heads=a.width // 128)

    def fresh() -> LlamaForCausalLM:
        torch.manual_seed(0)
        return LlamaForCausalLM(cfg).to(torch.bfloat16)

    ids = torch.randint(0, cfg.vocab_size, (4, 256), generator=torch.Generator().manual_seed(1)).to(dev)
    out: dict = {"device": torch.cuda.get_device_name() if cuda else dev, "bitsandbytes": bnb.__version__,
                 "torch": torch.__version__}

    # reference: the bf16 model with every quantized weight replaced by bitsandbytes' own NF4 round trip
    ref = fresh().to(dev)
    out["params"] = sum(p.numel() for p in ref.parameters())
    out["weights_bf16_mib"] = round(allocated() / 2**20)
    for name, m in ref.named_modules():
        if isinstance(m, torch.nn.Linear) and not name.endswith("lm_head"):
            q, st = bnb.functional.quantize_4bit(m.weight.data, quant_type="nf4", compress_statistics=True)
            m.weight.data = bnb.functional.dequantize_4bit(q, st).to(m.weight.dtype)
    with torch.no_grad():
        want = ref(input_ids=ids).logits.float()
    del ref
    if cuda:
        torch.cuda.empty_cache()

    before = allocated()
    model = fresh().to(dev)
    model, counts = CAUSAL_LM.make_trainable(model, lora=LoraConfig(r=16, alpha=32, dropout=0.0, quantization_bit=4))
    out["weights_4bit_mib"] = round((allocated() - before) / 2**20)
    out["linear4bit_layers"] = sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    out["trainable_params"] = counts["language_model"]
    with torch.no_grad():
        got = model(input_ids=ids).logits.float()
    out["max_logit_diff_vs_bnb_roundtrip"] = float((got - want).abs().max())
    out["logit_scale"] = float(want.abs().mean())

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    allocated()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss))
    allocated()
    out["step_ms"] = round((time.perf_counter() - t0) / a.steps * 1000, 1)
    out["loss_first_last"] = [round(losses[0], 4), round(losses[-1], 4)]
    out["peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20) if cuda else None

    with torch.no_grad():
        trained = model(input_ids=ids).logits.float()
        merged = CAUSAL_LM.merge_adapters(model)
        after = merged(input_ids=ids).logits.float()
    out["linear4bit_after_merge"] = sum(isinstance(m, bnb.nn.Linear4bit) for m in merged.modules())
    out["max_logit_diff_merged_vs_trained"] = float((after - trained).abs().max())
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
