"""Training throughput: padded vs packed batches, live experts vs precomputed expert features.

Why: two costs dominate a Mova training step and both can be removed. (i) LLaVA-style data has very
uneven lengths (short captions beside long answers, text-only turns), so padding every sample to the
longest of its batch wastes LLM compute; packing samples into rows (``data.packing``) removes it.
(ii) The experts are frozen, yet running them (SAM at 1024 px above all) can cost more than the rest of
the step; reading their features (``images[f"{name}.features"]``) removes that cost.

What is timed: forward + backward + AdamW step on the trainable parameters, ``align``-style (fusion
trainable; gradients still flow back through the frozen LLM) or ``sft``-style (fusion + LLM), over the
same samples per step in every variant. Batches are collated (and images transformed) before timing:
in training a DataLoader's workers do that work beside the steps. Warm-up steps are excluded.

Configs (random weights, nothing downloaded): ``tiny`` is the tiny preset without OCR; ``mid`` makes the
experts dominate the step as SAM at 1024 px does beside a small LLM (a deeper SAM-like encoder at 512 px
and a wider CLIP tower at 224 px before the tiny LLM); ``gpu`` has real expert shapes (CLIP ViT-B/16 at
224 px, SAM ViT-B at 1024 px pooled 4 x 4) before a 12-layer, 1024-wide Llama, for MFU on a GPU.
Data: answers log-uniform in 8..400 tokens; ``sft`` also gets 25% text-only samples (``align`` leaves them
out, as ``run_stage`` does).

Features: cached with :mod:`mova.data.feature_cache` (``build_cache``) and read back by ``LlavaDataset`` as
in training (``data.feature_cache``) when that works, else computed in memory by running each expert once;
either way the timed steps only read them.

Model FLOPs (for TFLOP/s and, on a GPU, MFU against the chip's dense bf16 peak) count matrix products
only, 2 FLOPs per multiply-add: the LLM ``4 x N_llm`` per non-pad token when it is frozen (forward +
activation gradients for the fusion network) and ``6 x N_llm`` when it trains (plus weight
gradients), ``N_llm`` excluding the input embedding table; the fusion network ``6 x`` its projector's
parameters per visual token; each live expert ``2 x`` its parameters per token it processes (frozen, no
backward), nothing when features are read. Attention scores are left out (an undercount that is large
at the tiny widths, a few percent for ``gpu``), and so is padding: MFU counts useful work only.

Repetitions: ``--reps`` rounds (default 3) of ``--steps`` timed steps per variant, the variants taking turns
step by step (``benchmarks/_timing.py`` says why); each cell is the median over rounds with its min-max, and
each ratio is a ratio of medians with the range of the per-round ratios.

Loss: the trainers' (:func:`mova.model.label_loss.label_loss`: the LM head at label positions only, a
chunked cross-entropy). ``--memory`` compares it with the model's own full-logits loss
(``model(**batch).loss``) on the same batches: peak memory a step adds (the process RSS sampled every 2 ms on
a CPU, minus the RSS before the step; CUDA's allocator peak on a GPU) and speed. Its default config is
``smol``: the ``smol-vlm`` preset's experts (no OCR) before SmolLM2-135M's shape (49k-token vocabulary).

Usage::

    python benchmarks/train_throughput.py --clock cpu          # the CPU table the README quotes
    python benchmarks/train_throughput.py --memory --steps 2   # smol-vlm sft: full-logits loss vs label positions
    python benchmarks/train_throughput.py --quick              # smoke run: tiny config, a few small steps
    python benchmarks/train_throughput.py --configs mid --stages align
    python benchmarks/train_throughput.py --device cuda --dtype bf16
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _timing import PeakMemory, add_reps_argument, ratio_cell, stat  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from mova.config import DataConfig, ModelConfig, apply_overrides, from_dict  # noqa: E402
from mova.data.llava import (  # noqa: E402
    LlavaDataset,
    ModalityLengthGroupedSampler,
    MovaCollator,
    PackedCollator,
)
from mova.model.builder import build_model  # noqa: E402
from mova.model.label_loss import label_loss  # noqa: E402
from mova.model.modeling_mova import MovaForCausalLM  # noqa: E402
from mova.presets import preset_dict  # noqa: E402

#: dense bf16 peak of the chips this is run on (H100 / H200 SXM), for MFU.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
WORDS = ("the a red blue circle square image shows small large left right top bottom near far color shape "
         "object scene light dark bright two three many person dog cat car tree house sky water").split()


# --- configs -------------------------------------------------------------------------------------
def model_config(name: str, dtype: str) -> ModelConfig:
    """``tiny`` (preset, no OCR), ``mid`` (experts dominate the step), ``smol`` (the smol-vlm preset without OCR:
    SmolLM2-135M's shape, random weights) or ``gpu``; context widened for long samples."""
    if name == "smol":
        data = preset_dict("smol-vlm")
        data["experts"] = [e for e in data["experts"] if e["family"] != "ocr_text"]
        return from_dict(ModelConfig, apply_overrides(data, [f"dtype={dtype}", "attn_implementation=sdpa"]), "model")
    data = preset_dict("tiny")
    data["experts"] = [e for e in data["experts"] if e["family"] != "ocr_text"]
    if name == "mid":
        data["experts"] = [
            {"family": "clip", "tiny": True, "image_size": 224, "position_scheme": "full",
             "kwargs": {"patch_size": 16, "width": 192, "layers": 4, "head_width": 48}},
            {"family": "sam", "tiny": True, "image_size": 512, "pool": 4, "position_scheme": "share_by_row",
             "kwargs": {"embed_dim": 128, "depth": 4, "num_heads": 4, "window_size": 8,
                        "global_attn_indexes": [1, 3], "out_chans": 64}},
        ]
    elif name == "gpu":
        data["experts"] = [
            {"family": "clip", "model": "ViT-B-16", "feature_layer": -2, "position_scheme": "full"},
            {"family": "sam", "model": "vit_b", "pool": 4, "position_scheme": "share_by_row"},
        ]
        data["llm"]["config"].update(hidden_size=1024, intermediate_size=2816, num_hidden_layers=12,
                                     num_attention_heads=16, num_key_value_heads=16)
    elif name != "tiny":
        raise SystemExit(f"unknown config {name!r} (tiny, mid, smol, gpu)")
    overrides = ["llm.config.max_position_embeddings=4096", f"dtype={dtype}", "attn_implementation=sdpa"]
    return from_dict(ModelConfig, apply_overrides(data, overrides), "model")


# --- data ----------------------------------------------------------------------------------------
def write_data(root: Path, n: int, tokenizer: Any, text_only: float, seed: int) -> Path:
    """LLaVA records with answers log-uniform in 8..400 tokens (words that are one token each)."""
    rng = random.Random(seed)
    words_1tok = [w for w in WORDS if len(tokenizer(" " + w, add_special_tokens=False).input_ids) == 1]
    (root / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        words = int(math.exp(rng.uniform(math.log(8), math.log(400))))
        answer = " ".join(rng.choice(words_1tok) for _ in range(words))
        rec: dict[str, Any] = {"id": str(i), "conversations": [
            {"from": "human", "value": "Describe the picture." if rng.random() >= text_only else "Say something."},
            {"from": "gpt", "value": answer}]}
        if rec["conversations"][0]["value"].startswith("Describe"):
            w, h = rng.randint(64, 320), rng.randint(64, 320)
            img = Image.new("RGB", (w, h), tuple(rng.randint(0, 255) for _ in range(3)))
            ImageDraw.Draw(img).ellipse((w // 5, h // 5, w // 2, h // 2), fill=(200, 30, 30))
            img.save(root / "images" / f"{i}.png")
            rec["image"] = f"images/{i}.png"
            rec["conversations"][0]["value"] = "<image>\n" + rec["conversations"][0]["value"]
        records.append(rec)
    path = root / "data.json"
    path.write_text(json.dumps(records))
    return path


def load_samples(processor: Any, path: Path, template: str, drop_text_only: bool,
                 feature_cache: Any = None) -> tuple[list[dict], list[Path]]:
    """Tokenized samples (images transformed, or cached features read) and each sample's image paths."""
    records = json.loads(path.read_text())
    if drop_text_only:
        records = [r for r in records if "image" in r]
    cfg = DataConfig(data_path=str(path), image_folder=str(path.parent), verify_images=False)
    kwargs = {"feature_cache": feature_cache} if feature_cache is not None else {}
    ds = LlavaDataset(records, processor, cfg, template, progress=False, **kwargs)
    return [ds[i] for i in range(len(ds))], [ds.items[i].images for i in range(len(ds))]


def with_features(model: MovaForCausalLM, processor: Any, samples: list[dict], paths: list[list[Path]],
                  dtype: str, cache_root: Path, reload: Any) -> tuple[list[dict], str]:
    """The samples with each pixel expert's input replaced by ``{name}.features`` (experts never run).

    Through the training path when it works (``build_cache``, then the dataset reading the cache);
    ``reload(cache)`` rebuilds the samples from a cache.
    """
    try:
        from mova.data.feature_cache import FeatureCache, build_cache

        all_paths = sorted({str(p) for ps in paths for p in ps})
        build_cache(model, processor, all_paths, cache_root, dtype=dtype, progress=False)
        cache = FeatureCache(cache_root)
        cache.open_model(model)
        cached = reload(cache)
        if not all(f"{n}.features" in s["images"] for s in cached if s.get("images") for n in cache.experts):
            raise RuntimeError("the dataset did not read the cached features")
        return cached, "feature_cache"
    except Exception as e:  # noqa: BLE001 - the cache module is young; the in-memory path measures the same
        logging.warning("feature cache unusable (%s: %s); computing features in memory", type(e).__name__, e)
        return _features_in_memory(model, samples), "in memory"


@torch.no_grad()
def _features_in_memory(model: MovaForCausalLM, samples: list[dict]) -> list[dict]:
    out = []
    for s in samples:
        item = dict(s)
        if s.get("images"):
            images = dict(s["images"])
            for name, expert in model.experts.items():
                if expert.input_kind == "pixels":
                    param = next(expert.parameters())
                    images[f"{name}.features"] = expert(images.pop(name).to(param.device, param.dtype)).cpu()
            item["images"] = images
        out.append(item)
    return out


def batches_of(samples: list[dict], batch_size: int, seed: int) -> list[list[dict]]:
    """Groups of ``batch_size`` samples in the trainer's order (one modality per batch, lengths mixed)."""
    lengths = [len(s["input_ids"]) for s in samples]
    sampler = ModalityLengthGroupedSampler(lengths, [bool(s.get("images")) for s in samples], batch_size, seed)
    order = list(sampler)
    groups = [[samples[i] for i in order[k:k + batch_size]] for k in range(0, len(order), batch_size)]
    return [g for g in groups if len(g) == batch_size]


def to_device(batch: dict[str, Any], device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    def move(t: torch.Tensor) -> torch.Tensor:
        return t.to(device, dtype) if t.is_floating_point() else t.to(device)

    out = {k: move(v) for k, v in batch.items() if isinstance(v, torch.Tensor)}
    if batch.get("images"):
        out["images"] = {k: move(v) for k, v in batch["images"].items()}
    return out


# --- timing --------------------------------------------------------------------------------------
def step_flops(model: MovaForCausalLM, batch: dict[str, Any], train_llm: bool, live_experts: bool) -> float:
    """Model FLOPs of one step (see the module docstring for what is counted)."""
    llm_params = sum(p.numel() for p in model.language_model.parameters()) - model.get_input_embeddings().weight.numel()
    tokens = int(batch["attention_mask"].sum())
    flops = (6 if train_llm else 4) * llm_params * tokens
    images = batch.get("images")
    if not images:
        return float(flops)
    num_images = int(next(iter(images.values())).shape[0])
    for block in model.config.blocks():
        if block.name in model.fusion.projectors:
            proj = sum(p.numel() for p in model.fusion.projectors[block.name].parameters())
            flops += 6 * proj * block.max_tokens * num_images
        expert = model.experts[block.name]
        if live_experts and block.input_kind == "pixels":
            flops += 2 * sum(p.numel() for p in expert.parameters()) * expert.num_tokens * num_images
    return float(flops)


@dataclass
class Variant:
    """One way of feeding the same samples: its batches and what its timed steps added up to."""

    batching: str
    experts: str
    batches: list[tuple[dict[str, Any], int]]  # (batch on the device, samples in it)
    loss: str = "label"  # label: label_loss (the trainers'); full: model(**batch).loss
    seconds: float = 0.0
    samples: int = 0
    tokens: int = 0
    slots: int = 0
    flops: float = 0.0
    peak: int = 0
    steps: int = 0
    #: per round (``--reps``): seconds, samples, tokens, and the most memory one step added
    rounds: list[list[float]] = field(default_factory=list)


@dataclass
class Result:
    config: str
    stage: str
    batching: str
    experts: str
    loss: str
    samples_s: Any  # _timing.Stat over rounds
    tokens_s: Any
    added_mib: Any
    pad_frac: float
    step_ms: float
    peak_mib: float
    tflops: float
    mfu: float | None


def run_variants(model: MovaForCausalLM, variants: list[Variant], train_llm: bool, warmup: int, steps: int,
                 device: torch.device, clock: Any = time.perf_counter, reps: int = 1) -> None:
    """Warm each variant up, then time ``steps`` forward + backward + AdamW steps of each, interleaved.

    The warm-up covers every batch that is timed (``max(warmup, len(batches))`` steps), so no timed step
    pays for a shape seen for the first time (kernel selection, allocator growth: large on a GPU).

    Interleaving (one step of each variant per round, the order rotating) spreads any drift of a shared
    machine's load evenly over the variants, so their ratios stay meaningful even when absolute numbers
    wander. One optimizer serves all variants: throughput does not depend on the weights' values. ``reps``
    rounds of ``steps`` steps each; every variant records its totals per round.
    """
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    model.train()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step(batch: dict[str, Any], loss: str) -> None:
        (label_loss(model, batch) if loss == "label" else model(**batch).loss).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for v in variants:
        for i in range(max(warmup, len(v.batches))):
            step(v.batches[i % len(v.batches)][0], v.loss)
    for k in range(reps * steps):
        i = k % steps
        if i == 0:
            for v in variants:
                v.rounds.append([0.0, 0, 0, 0.0])
        for v in variants[k % len(variants):] + variants[:k % len(variants)]:
            batch, n = v.batches[i % len(v.batches)]
            sync()
            with PeakMemory(device) as mem:
                start = clock()
                step(batch, v.loss)
                sync()
                took = clock() - start
            v.seconds += took
            v.peak = max(v.peak, mem.peak)
            v.rounds[-1][0] += took
            v.rounds[-1][1] += n
            v.rounds[-1][2] += int(batch["attention_mask"].sum())
            v.rounds[-1][3] = max(v.rounds[-1][3], (mem.peak - mem.start) / 2**20)
            v.steps += 1
            v.samples += n
            v.tokens += int(batch["attention_mask"].sum())
            v.slots += batch["input_ids"].numel()
            v.flops += step_flops(model, batch, train_llm, live_experts=v.experts == "live")


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def bench_config(name: str, stage: str, args: argparse.Namespace, root: Path) -> list[Result]:
    """All four variants (padded / packed x live experts / features) of one config and stage."""
    device, dtype_name = torch.device(args.device), {"bf16": "bfloat16", "fp32": "float32"}[args.dtype]
    torch.manual_seed(0)
    model, processor = build_model(model_config(name, dtype_name), load_weights=False)
    model.to(device)
    model.requires_grad_(False)
    model.fusion.requires_grad_(True)
    train_llm = stage == "sft"
    model.language_model.requires_grad_(train_llm)
    n_batches = args.steps
    data = write_data(root / f"{name}-{stage}", args.batch_size * n_batches * 2, processor.tokenizer,
                      text_only=0.25, seed=args.seed)
    template = "plain" if stage == "align" else "vicuna_v1"
    samples, paths = load_samples(processor, data, template, drop_text_only=stage == "align")
    feats, source = with_features(model, processor, samples, paths, dtype_name, root / f"cache-{name}",
                                  lambda cache: load_samples(processor, data, template, stage == "align", cache)[0])
    longest = max(len(s["input_ids"]) for s in samples)
    max_tokens = args.max_tokens or math.ceil(longest / 64) * 64
    pad = processor.tokenizer.pad_token_id
    collators = {"padded": MovaCollator(pad), f"packed ({max_tokens})": PackedCollator(pad, max_tokens=max_tokens)}
    variants = []
    for experts, pool in (("live", samples), (f"features ({source})", feats)):
        groups = batches_of(pool, args.batch_size, args.seed)[:n_batches]
        for batching, collate in collators.items():
            batches = [(to_device(collate(g), device, model.dtype), len(g)) for g in groups]
            variants.append(Variant(batching, experts, batches))
    if args.memory:  # the same batches through both losses
        variants = [Variant(v.batching, v.experts, v.batches, loss) for v in variants[:1] for loss in ("full", "label")]
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    run_variants(model, variants, train_llm, args.warmup, args.steps, device, clock, args.reps)
    peak = peak_flops(device)
    results = []
    for v in variants:
        flops_s = v.flops / v.seconds
        results.append(Result(name, stage, v.batching, v.experts, v.loss, stat([r[1] / r[0] for r in v.rounds]),
                              stat([r[2] / r[0] for r in v.rounds]), stat([r[3] for r in v.rounds]),
                              1 - v.tokens / v.slots, 1000 * v.seconds / v.steps, v.peak / 2**20, flops_s / 1e12,
                              flops_s / peak if peak else None))
    return results


# --- report --------------------------------------------------------------------------------------
def markdown(results: list[Result], device: str) -> str:
    head = ("| config | stage | batches | experts | samples/s | tokens/s | pad % | step ms | peak MiB | TFLOP/s | MFU "
            "| packing x (tok/s) | features x (samples/s) |")
    lines = [head, "|" + "---|" * 13]
    for r in results:
        same = {(o.batching.split()[0], o.experts.split()[0]): o for o in results
                if (o.config, o.stage) == (r.config, r.stage)}
        kind, src = r.batching.split()[0], r.experts.split()[0]
        pack = ratio_cell(r.tokens_s, same[("padded", src)].tokens_s) if kind == "packed" else "-"
        feat = ratio_cell(r.samples_s, same[(kind, "live")].samples_s) if src == "features" else "-"
        lines.append(
            f"| {r.config} | {r.stage} | {r.batching} | {r.experts} | {r.samples_s.cell('.1f')} "
            f"| {r.tokens_s.cell(',.0f')} | {100 * r.pad_frac:.0f} | {r.step_ms:,.1f} | {r.peak_mib:,.0f} "
            f"| {r.tflops:.3f} | {'-' if r.mfu is None else f'{100 * r.mfu:.1f}%'} | {pack} | {feat} |")
    mem = "torch.cuda.max_memory_allocated" if device.startswith("cuda") else "peak process RSS during timed steps"
    return "\n".join(lines) + (f"\n\npeak MiB: {mem}; pad %: padded slots / all slots; tokens/s: non-pad tokens; "
                               "cells: median (min-max) over rounds; ratios: of medians (range of per-round ratios).")


def memory_markdown(results: list[Result]) -> str:
    """``--memory``: the full-logits loss against the label-position loss, per config and stage."""
    lines = ["| config | stage | loss | samples/s | step MiB added | memory vs full logits | speed vs full logits |",
             "|---|---|---|---:|---:|---:|---:|"]
    for r in results:
        full = next(o for o in results if (o.config, o.stage, o.loss) == (r.config, r.stage, "full"))
        name = "full logits (model(**batch).loss)" if r.loss == "full" else "label positions (label_loss)"
        lines.append(f"| {r.config} | {r.stage} | {name} | {r.samples_s.cell('.2f')} | {r.added_mib.cell(',.0f')} "
                     f"| {ratio_cell(r.added_mib, full.added_mib)} | {ratio_cell(r.samples_s, full.samples_s)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default="tiny,mid", help="comma-separated: tiny, mid, gpu (for a GPU)")
    p.add_argument("--stages", default="align,sft", help="comma-separated: align, sft")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--batch-size", type=int, default=16, help="samples per step (padded or packed)")
    p.add_argument("--max-tokens", type=int, default=0, help="packed row length (default: longest sample)")
    p.add_argument("--warmup", type=int, default=1,
                   help="warm-up steps per variant; at least one pass over the timed batches is always made")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                   help="cpu: time the main thread's CPU time, with one torch thread (fair on a shared, busy "
                        "machine, where wall time mostly measures the other tenants)")
    p.add_argument("--seed", type=int, default=0)
    add_reps_argument(p)
    p.add_argument("--memory", action="store_true",
                   help="compare the full-logits loss with the label-position loss (padded batches, live experts); "
                        "default config smol, stage sft")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: the tiny config, 4 samples per step, 2 rounds of 1 timed step per variant")
    known = p.parse_known_args(argv)[0]
    if known.memory:
        p.set_defaults(configs="smol", stages="sft", batch_size=8)
    if known.quick:  # quick sizes are defaults: explicit arguments still win
        p.set_defaults(configs="tiny", batch_size=4, steps=1, reps=2)
    args = p.parse_args(argv)
    if args.clock == "cpu":
        if args.device != "cpu":
            raise SystemExit("--clock cpu is for CPU runs")
        args.threads = 1  # every op then runs on the main thread, whose CPU time is what is timed
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("mova").setLevel(logging.ERROR)
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs.split(","):
            for stage in args.stages.split(","):
                print(f"{name} / {stage} ...", file=sys.stderr, flush=True)
                results += bench_config(name, stage, args, Path(tmp))
                partial = memory_markdown(results) if args.memory else markdown(results, args.device)
                print(partial, file=sys.stderr, flush=True)  # partial results as they come
    device = args.device + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else
                            f" ({torch.get_num_threads()} threads)")
    print(f"\n{device}, {args.dtype}, {args.batch_size} samples/step, {max(args.warmup, args.steps)} warm-up + "
          f"{args.reps} rounds x {args.steps} timed steps per variant (interleaved), {args.clock} clock, torch "
          f"{torch.__version__}\n")
    print(memory_markdown(results) if args.memory else markdown(results, args.device))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
