"""Mova at a realistic shape: training speed, MFU, the levers that cut step time, and peak memory per stage.

Why: the other benchmarks time tiny models, where the LM head, the experts and Python overheads weigh
differently than at a real shape. This one runs the ``bench`` preset (``mova model-info bench``): the 7B
recipe's CLIP ViT-L/14-336 (576 tokens, ``full`` positions) and SAM ViT-B (1024 px, 64 x 64 = 4096 tokens,
``share_by_row``) before a 1.1B Llama (width 2048, 22 layers, 32 heads / 4 KV heads, 32K vocabulary), all with
random weights built from configs (nothing is downloaded). Every number comes from Mova's own trainers:

* ``sft``: :class:`~mova.trainers.base.MovaTrainer` as ``mova train sft`` builds it (``configure_trainable``,
  ``load_llava_data``, ``data_collator``, ``training_arguments``), on LLaVA records with skewed answer lengths
  (log-uniform) and 25% text-only records. Variants: padded vs packed batches (``data.packing``), live experts vs
  cached features (``mova cache-features`` -> ``data.feature_cache``), activation checkpointing off / on, and
  flash-attention 2 when the ``flash_attn`` package is installed. Tokens/s and model FLOPs utilisation.
* ``dpo``: :class:`~mova.trainers.dpo.DpoTrainer` (frozen reference copy) on image + question pairs,
  ``dpo.pair_encoding`` ``shared`` vs ``padded``: pairs/s.
* ``rl``: one GRPO and one PPO iteration (``GrpoTrainer`` / ``PpoTrainer`` built from a run config, their own
  ``make_experience`` and ``train_on``): seconds in generation, scoring and training, and generation's share.
* ``--memory``: peak memory of each stage with the options that cut it (activation checkpointing, LoRA,
  precomputed reference, cached features, PPO's shared critic trunk), each row in its own process.
* ``--profile``: torch profiler's top operators over two SFT steps.

Timing: each variant of a section runs ``--reps`` times, in turns whose order rotates (A B, B A, ...), and the
table gives the median with the min-max of the repetitions; one repetition is a fresh trainer's
``--warmup`` untimed steps and ``--steps`` timed ones (each step timed end to end, data loading included, with
the GPU synchronised). ``--clock cpu`` times process CPU time instead of wall time (for a shared CPU).

Model FLOPs (MFU's numerator; recomputation by checkpointing is not counted): ``6 x`` the trainable matrices'
parameters per token and ``4 x`` a frozen LLM's (its activation gradients still flow), causal attention scores
``6 x layers x width x length`` per token of each sample (``x 2/3`` without weight gradients), the fusion MLP
``6 x`` its parameters per visual token, and each live expert ``2 x`` its parameters per token it processes (its
attention scores are left out: SAM's are mostly windowed). Peak: dense bf16 of the chip (H100 / H200 989
TFLOP/s); on a CPU a matrix product of the run's dtype measured at start-up (``MFU`` there says how close the
step comes to the machine's own GEMM).

Shapes (``--shape``): ``full`` is the preset; ``small`` keeps every family and scheme with widths a CPU can
run (CLIP 4 x 256 at 112 px, SAM 4 x 128 at 256 px, Llama 4 x 256 with 8 / 2 heads and the 32K vocabulary);
``quick`` (``--quick``) uses the tiny towers and a 2-layer Llama, for a smoke run in seconds.

Usage::

    python benchmarks/bench_shape.py --quick                          # CPU smoke run (< 30 s)
    python benchmarks/bench_shape.py --shape small --clock cpu        # the CPU tables of docs/bench.md
    python benchmarks/bench_shape.py --shape small --memory --sections none
    python benchmarks/bench_shape.py --shape full                     # on a GPU (benchmarks/gpu/run_bench.sh)
    python benchmarks/bench_shape.py --shape small --profile --sections none
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import logging
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
START = time.perf_counter()

import torch  # noqa: E402
from _timing import PeakMemory, add_reps_argument, interleaved, stat  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

#: dense bf16 peak (FLOP/s) by the name torch gives the chip; MFU's denominator on a GPU.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12}
WORDS = ("the a red blue circle square image shows small large left right top bottom near far color shape "
         "object scene light dark bright two three many person dog cat car tree house sky water").split()

# --- shapes --------------------------------------------------------------------------------------------------------
#: per shape: the model overrides of the ``bench`` preset and the workload sizes.
SHAPES: dict[str, dict[str, Any]] = {
    "full": {"experts": None, "llm": {},
             "sft_batch": 4, "pack_tokens": 16384, "answer_words": (8, 400), "records": 64,
             "dpo_batch": 2, "pair_words": (10, 200), "pairs": 32,
             "rl_prompts": 4, "rl_generations": 4, "rl_new_tokens": 64, "rl_minibatch": 4, "rl_ckpt": True,
             "image_px": (256, 640)},
    "small": {"experts": [
                 {"family": "clip", "model": "ViT-L-14-336", "feature_layer": -2, "position_scheme": "full",
                  "image_size": 112, "kwargs": {"quick_gelu": True, "layers": 4, "width": 256, "head_width": 64}},
                 {"family": "sam", "model": "vit_b", "position_scheme": "share_by_row", "image_size": 256,
                  "kwargs": {"embed_dim": 128, "depth": 4, "num_heads": 4, "window_size": 8,
                             "global_attn_indexes": [1, 3], "out_chans": 64}}],
              "llm": {"hidden_size": 256, "intermediate_size": 704, "num_hidden_layers": 4,
                      "num_attention_heads": 8, "num_key_value_heads": 2},
              "sft_batch": 4, "pack_tokens": 1024, "answer_words": (8, 200), "records": 48,
              "dpo_batch": 2, "pair_words": (10, 100), "pairs": 24,
              "rl_prompts": 2, "rl_generations": 4, "rl_new_tokens": 16, "rl_minibatch": 4, "rl_ckpt": False,
              "image_px": (96, 320)},
    "quick": {"experts": [
                 {"family": "clip", "tiny": True, "feature_layer": -2, "position_scheme": "full"},
                 {"family": "sam", "tiny": True, "position_scheme": "share_by_row"}],
              "llm": {"hidden_size": 64, "intermediate_size": 176, "num_hidden_layers": 2,
                      "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 4096},
              "sft_batch": 4, "pack_tokens": 256, "answer_words": (4, 48), "records": 16,
              "dpo_batch": 2, "pair_words": (4, 24), "pairs": 8,
              "rl_prompts": 2, "rl_generations": 2, "rl_new_tokens": 4, "rl_minibatch": 4, "rl_ckpt": False,
              "image_px": (64, 160)},
}


def model_dict(shape: str, dtype: str, attn: str = "sdpa") -> dict[str, Any]:
    """The ``bench`` preset, scaled to ``shape``, in ``dtype`` with attention ``attn``."""
    from mova.presets import preset_dict

    data = preset_dict("bench")
    spec = SHAPES[shape]
    if spec["experts"] is not None:
        data["experts"] = copy.deepcopy(spec["experts"])
    data["llm"]["config"].update(spec["llm"])
    data["dtype"], data["attn_implementation"] = dtype, attn
    return data


# --- timing: interleaved repetitions (benchmarks/_timing.py), median and spread ---------------------------------
def cell(values: Sequence[float], fmt: str = ",.1f") -> str:
    """``median (min-max)`` of the repetitions that produced a number (``n/a`` when none did)."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    return stat(values).cell(fmt) if values else "n/a"


def guarded(run: Callable[[str, int], dict[str, Any]], device: torch.device) -> Callable[[str, int], dict[str, Any]]:
    """``run`` with a failure (out of memory at a large shape, a missing kernel) recorded as ``{"error": ...}``
    instead of ending the benchmark: the other variants still report."""
    def wrapped(name: str, rep: int) -> dict[str, Any]:
        try:
            return run(name, rep)
        except Exception as e:  # noqa: BLE001 - reported in the table, beside the variants that ran
            logging.getLogger(__name__).error("%s failed: %s: %s", name, type(e).__name__, e)
            free(device)
            return {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}"}
    return wrapped


def failed(results: Sequence[dict[str, Any]]) -> str | None:
    return next((r["error"] for r in results if "error" in r), None)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- peaks ---------------------------------------------------------------------------------------------------------
def peak_flops(device: torch.device, dtype: torch.dtype, clock: Callable[[], float]) -> tuple[float, str]:
    """The chip's dense bf16 peak from :data:`PEAK_BF16_FLOPS`, else a matrix product of ``dtype`` measured here."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in PEAK_BF16_FLOPS.items():
            if key in name:
                return value, f"{name}: dense bf16 spec {value / 1e12:.0f} TFLOP/s"
    n = 4096 if device.type == "cuda" else 512
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync(device)
    best = float("inf")
    for _ in range(5):
        t0 = clock()
        for _ in range(4):
            a @ b
        sync(device)
        best = min(best, (clock() - t0) / 4)
    value = 2 * n**3 / best
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} thread(s)"
    return value, f"{where}: measured {n}x{n} {str(dtype).replace('torch.', '')} matmul {value / 1e9:,.1f} GFLOP/s"


# --- data ----------------------------------------------------------------------------------------------------------
def one_token_words(tokenizer: Any) -> list[str]:
    return [w for w in WORDS if len(tokenizer(" " + w, add_special_tokens=False).input_ids) == 1]


def draw_image(rng: random.Random, lo: int, hi: int) -> Image.Image:
    w, h = rng.randint(lo, hi), rng.randint(lo, hi)
    img = Image.new("RGB", (w, h), tuple(rng.randint(0, 255) for _ in range(3)))
    ImageDraw.Draw(img).ellipse((w // 5, h // 5, w // 2, h // 2), fill=(200, 30, 30))
    return img


def log_uniform(rng: random.Random, lo: int, hi: int) -> int:
    return int(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def write_llava(root: Path, n: int, words: list[str], spec: dict[str, Any], seed: int = 0) -> Path:
    """LLaVA records: answers log-uniform in ``answer_words`` one-token words (skewed lengths), 25% text-only."""
    rng = random.Random(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        answer = " ".join(rng.choice(words) for _ in range(log_uniform(rng, *spec["answer_words"])))
        if rng.random() < 0.25:
            records.append({"id": str(i), "conversations": [{"from": "human", "value": "Say something."},
                                                            {"from": "gpt", "value": answer}]})
            continue
        draw_image(rng, *spec["image_px"]).save(root / "images" / f"{i}.png")
        records.append({"id": str(i), "image": f"images/{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nDescribe the picture."}, {"from": "gpt", "value": answer}]})
    path = root / "data.json"
    path.write_text(json.dumps(records))
    return path


def write_prompts(root: Path, n: int, spec: dict[str, Any], seed: int = 0) -> Path:
    rng = random.Random(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        draw_image(rng, *spec["image_px"]).save(root / "images" / f"p{i}.png")
        lines.append(json.dumps({"prompt": "Name the colours in the picture.", "image": f"images/p{i}.png"}))
    path = root / "prompts.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


# --- FLOPs ---------------------------------------------------------------------------------------------------------
def matrix_params(module: torch.nn.Module, trainable: bool | None = None) -> int:
    """Parameters of the module's matrices (2-D weights, embedding tables excluded), optionally by trainability."""
    total = 0
    for mod in module.modules():
        if isinstance(mod, torch.nn.Embedding):
            continue
        for p in mod.parameters(recurse=False):
            if p.dim() >= 2 and (trainable is None or p.requires_grad == trainable):
                total += p.numel()
    return total


def sample_lengths(batch: dict[str, Any]) -> list[int]:
    """Each sample's token count: per packed sample from ``sequence_ids``, per padded row from its mask."""
    if "sequence_ids" in batch:
        out = []
        for row in batch["sequence_ids"]:
            ids = row[row >= 0]
            out += torch.bincount(ids).tolist() if ids.numel() else []
        return [n for n in out if n]
    return [int(n) for n in batch["attention_mask"].sum(1).tolist()]


@dataclass
class FlopModel:
    """Model FLOPs of a Mova step (see the module docstring)."""

    llm_train: int
    llm_frozen: int
    layers: int
    width: int
    fusion: dict[str, int]
    experts: dict[str, tuple[int, int]]  # name -> (matrix parameters, tokens per image)
    llm_trains: bool
    #: visual tokens per image that each fusion projector maps
    fusion_tokens: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, model: Any) -> FlopModel:
        from mova.model.policy import unwrap

        inner = unwrap(model)
        lm = inner.language_model
        tcfg = inner.config.text_config
        experts = {name: (matrix_params(e), e.num_tokens) for name, e in inner.experts.items()
                   if e.input_kind == "pixels"}
        fusion = {n: matrix_params(p) for n, p in inner.fusion.projectors.items()} \
            if hasattr(inner.fusion, "projectors") else {}
        tokens = {b.name: b.max_tokens for b in inner.config.blocks()}
        return cls(matrix_params(lm, True), matrix_params(lm, False), tcfg.num_hidden_layers, tcfg.hidden_size,
                   fusion, experts, any(p.requires_grad for p in lm.parameters()), tokens)

    def step(self, lengths: list[int], images: int, live_experts: bool) -> float:
        """FLOPs of one step over samples of ``lengths`` tokens holding ``images`` images."""
        tokens = sum(lengths)
        flops = (6 * self.llm_train + 4 * self.llm_frozen) * tokens
        att = 6 if self.llm_trains else 4
        flops += sum(att * self.layers * self.width * n * n for n in lengths)  # causal: half of 2 x 2 x n^2
        flops += sum(6 * params * self.fusion_tokens.get(name, 0) for name, params in self.fusion.items()) * images
        if live_experts:
            flops += sum(2 * params * n for params, n in self.experts.values()) * images
        return float(flops)


# --- the run config and the model ----------------------------------------------------------------------------------
def run_config(stage: str, model: dict[str, Any], out: Path, overrides: list[str]) -> Any:
    """A stage's :class:`~mova.config.RunConfig` as ``mova train STAGE --config`` reads it (inline model)."""
    import yaml

    from mova.config import load_run_config

    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{stage}.yaml"
    path.write_text(yaml.safe_dump({"stage": stage, "model": model}))  # yaml keeps 1e-05 a float; json would not
    return load_run_config(path, overrides)


def train_overrides(args: argparse.Namespace, out: Path, steps: int, batch: int) -> list[str]:
    gpu = args.device.type == "cuda"
    return [f"train.output_dir={out}", f"train.max_steps={steps}", f"train.per_device_train_batch_size={batch}",
            "train.save_steps=0", "train.report_to=[]", "train.logging_steps=1000", "train.learning_rate=1e-5",
            "train.warmup_ratio=0", "train.lr_scheduler_type=constant", f"train.bf16={gpu}",
            f"train.use_cpu={not gpu}", f"train.dataloader_num_workers={args.workers}",
            "data.verify_images=false"]


@dataclass
class StepLog:
    """What the timing callback saw: per optimizer step its end time and the batch statistics."""

    ends: list[float] = field(default_factory=list)
    batches: list[tuple[list[int], int, int]] = field(default_factory=list)  # (sample lengths, images, slots)


def timed_trainer(base: type, log: StepLog, clock: Callable[[], float], device: torch.device) -> Any:
    """``base`` (a Mova trainer class) with its batches' shapes recorded and each step's end timed (GPU synced)."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def on_train_begin(self, *a: Any, **k: Any) -> None:
            sync(device)
            log.ends.append(clock())

        def on_step_end(self, *a: Any, **k: Any) -> None:
            sync(device)
            log.ends.append(clock())

    class Timed(base):  # type: ignore[misc, valid-type]
        def __init__(self, *a: Any, **k: Any):
            super().__init__(*a, **k)
            self.add_callback(StepClock())

        def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
            images = inputs.get("images") or {}
            n_images = int(next(iter(images.values())).shape[0]) if images else 0
            if "pair_index" in inputs:
                lengths = [int(inputs["attention_mask"].sum())]
            else:
                lengths = sample_lengths(inputs)
            log.batches.append((lengths, n_images, int(inputs["input_ids"].numel())))
            return super().training_step(model, inputs, num_items_in_batch)

    return Timed


def build(cfg: Any, device: torch.device) -> tuple[Any, Any]:
    """The model and processor ``run_stage`` would build for ``cfg`` (no ``init_from``: fresh, random weights)."""
    from mova.model.builder import build_model

    torch.manual_seed(cfg.train.seed)
    model, processor = on_device(device, lambda: build_model(cfg.model, load_weights=True))  # random init
    return model.to(device), processor


def on_device(device: torch.device, make: Callable[[], Any]) -> Any:
    """``make()`` with new tensors created on ``device`` (a GPU initialises 1.5B random weights in a fraction of
    the time a CPU takes); where anything in it refuses that, ``make()`` again as it is."""
    if device.type != "cuda":
        return make()
    try:
        with torch.device(device):
            return make()
    except Exception as e:  # noqa: BLE001 - the plain path below is the reference behaviour
        logging.getLogger(__name__).warning("building on %s failed (%s: %s); building on the CPU", device,
                                            type(e).__name__, e)
        free(device)
        return make()


def free(device: torch.device) -> None:
    """Give a GPU's cached blocks back between runs (a full ``gc`` costs ~0.5 s, so a CPU run skips it)."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


# --- SFT -----------------------------------------------------------------------------------------------------------
@dataclass
class SftVariant:
    name: str
    packing: bool = False
    cached: bool = False
    ckpt: bool = False
    attn: str = "sdpa"


def sft_variants(args: argparse.Namespace) -> list[SftVariant]:
    variants = [SftVariant("padded, live"), SftVariant("packed, live", packing=True),
                SftVariant("packed, cached features", packing=True, cached=True),
                SftVariant("packed, live, act. ckpt", packing=True, ckpt=True)]
    if args.device.type == "cuda" and flash_available():
        variants.append(SftVariant("packed, live, flash-attn 2", packing=True, attn="flash_attention_2"))
    return variants


def flash_available() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


class SftBench:
    """One model and its data; each variant a fresh ``MovaTrainer`` over them, as ``run_stage`` sets it up."""

    def __init__(self, args: argparse.Namespace, root: Path, lora: int = 0):
        from mova.trainers.stages import configure_trainable, open_feature_cache, stage_spec

        self.args, self.root, self.spec = args, root, SHAPES[args.shape]
        steps = args.warmup + args.steps
        self.cfg = run_config("sft", model_dict(args.shape, args.dtype), root / "sft",
                              train_overrides(args, root / "sft-out", steps, self.spec["sft_batch"])
                              + [f"data.packing_max_tokens={self.spec['pack_tokens']}", f"train.lora.r={lora}"])
        self.model, self.processor = build(self.cfg, args.device)
        configure_trainable(self.model, stage_spec("sft"), self.cfg)
        self.flops = FlopModel.of(self.model)
        words = one_token_words(self.processor.tokenizer)
        self.data = write_llava(root / "llava", self.spec["records"], words, self.spec)
        self.cfg.data.data_path, self.cfg.data.image_folder = str(self.data), str(self.data.parent)
        self.template = self.model.config.template
        self.cache = None
        self.datasets: dict[bool, Any] = {False: self._dataset(None)}
        self.open_cache = lambda: open_feature_cache(str(root / "cache"), self.model)

    def _dataset(self, cache: Any) -> Any:
        from mova.data.llava import load_llava_data

        return load_llava_data(self.cfg.data, self.processor, self.template, seed=self.cfg.train.seed,
                               feature_cache=cache).train

    def features(self) -> float:
        """Build the feature cache (``mova cache-features``' code) once; returns the seconds it took."""
        if True not in self.datasets:
            from mova.data.feature_cache import build_cache

            records = json.loads(self.data.read_text())
            t0 = time.perf_counter()
            build_cache(self.model, self.processor, records, self.root / "cache", image_folder=self.data.parent,
                        dtype="bfloat16" if self.args.device.type == "cuda" else "float32", progress=False)
            self.cache_seconds = time.perf_counter() - t0
            self.datasets[True] = self._dataset(self.open_cache())
        return self.cache_seconds

    def run(self, v: SftVariant, profile: Any = None) -> dict[str, float]:
        from mova.trainers.base import MovaTrainer
        from mova.trainers.optim import part_options
        from mova.trainers.stages import data_collator, training_arguments

        args = self.args
        cfg = copy.deepcopy(self.cfg)
        cfg.data.packing = v.packing
        cfg.train.gradient_checkpointing = v.ckpt
        if not v.ckpt:
            self.model.activation_checkpointing_disable()  # a shared model keeps what an earlier variant turned on
        if v.attn != self.model.config._attn_implementation:
            self.model.set_attn_implementation(v.attn)
        dataset = self.datasets[True] if v.cached else self.datasets[False]
        log = StepLog()
        trainer = timed_trainer(MovaTrainer, log, args.clock, args.device)(
            model=self.model, args=training_arguments(cfg), train_dataset=dataset,
            data_collator=data_collator(cfg, self.processor.tokenizer.pad_token_id),
            group_by_modality_length=cfg.data.group_by_modality_length, part_options=part_options(cfg.train))
        with PeakMemory(args.device, interval=0.01, trim=False) as mem, profile or contextlib.nullcontext():
            trainer.train()
        del trainer
        free(args.device)
        return self.summarise(log, mem.peak, live=not v.cached)

    def summarise(self, log: StepLog, peak: int, live: bool) -> dict[str, float]:
        timed = range(self.args.warmup, len(log.ends) - 1)
        seconds = sum(log.ends[i + 1] - log.ends[i] for i in timed)
        batches = [log.batches[i] for i in timed]
        tokens = sum(sum(b[0]) for b in batches)
        slots = sum(b[2] for b in batches)
        flops = sum(self.flops.step(b[0], b[1], live) for b in batches)
        return {"seconds": seconds, "tokens_s": tokens / seconds, "samples_s": sum(len(b[0]) for b in batches) /
                seconds, "step_ms": 1000 * seconds / max(len(batches), 1), "flops_s": flops / seconds,
                "pad": 1 - tokens / slots if slots else 0.0, "peak_mib": peak / 2**20}


def section_sft(args: argparse.Namespace, root: Path, report: Report) -> None:
    bench = SftBench(args, root)
    variants = sft_variants(args)
    cache_s = bench.features()
    results = interleaved([v.name for v in variants], args.reps, guarded(lambda name, rep: bench.run(
        next(v for v in variants if v.name == name)), args.device))
    base = results["padded, live"]
    lines = ["| variant | tokens/s | samples/s | step ms | pad % | TFLOP/s | MFU | vs padded, live (tokens/s) "
             "| peak MiB |", "|" + "---|" * 9]
    for v in variants:
        rs = results[v.name]
        if failed(rs) or failed(base):
            lines.append(f"| {v.name} | failed: {failed(rs) or failed(base)} |" + " |" * 7)
            continue
        mfu = [r["flops_s"] / args.peak for r in rs]
        speed = [r["tokens_s"] / b["tokens_s"] for r, b in zip(rs, base)]
        lines.append(f"| {v.name} | {cell([r['tokens_s'] for r in rs])} | {cell([r['samples_s'] for r in rs], '.2f')} "
                     f"| {cell([r['step_ms'] for r in rs], ',.0f')} | {100 * median([r['pad'] for r in rs]):.0f} "
                     f"| {cell([r['flops_s'] / 1e12 for r in rs], '.3f')} | {cell([100 * m for m in mfu], '.1f')}% "
                     f"| {cell(speed, '.2f')}x | {max(r['peak_mib'] for r in rs):,.0f} |")
    if args.device.type == "cuda" and not flash_available():
        lines.append("\nflash-attention 2: not installed here (no `flash_attn`): sdpa only.")
    lines.append(f"\nfeature cache built in {cache_s:.1f} s for {bench.spec['records']} records "
                 "(mova cache-features' build_cache; not in the step times).")
    report.add("SFT (MovaTrainer, fusion + LLM)", "\n".join(lines))
    if args.profile:
        profile_sft(args, bench, report)


def profile_sft(args: argparse.Namespace, bench: SftBench, report: Report) -> None:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device.type == "cuda" else [])
    prof = profile(activities=activities)
    saved = (args.warmup, args.steps)
    args.warmup, args.steps = 1, 2
    bench.cfg.train.max_steps = 3
    try:
        bench.run(SftVariant("packed, live", packing=True), profile=prof)
    finally:
        args.warmup, args.steps = saved
        bench.cfg.train.max_steps = sum(saved)
    key = "self_device_time_total" if args.device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=args.profile_rows, max_name_column_width=60)
    report.add("profile: top operators over 3 SFT steps (packed, live; one warm-up step included)",
               f"sorted by {key}\n\n```\n{table}\n```")


# --- DPO -----------------------------------------------------------------------------------------------------------
def pair_dataset(processor: Any, template: str, spec: dict[str, Any], words: list[str], max_length: Any) -> Any:
    from mova.data.pairs import PairDataset, PairEncoder
    from mova.data.preference import PreferencePair

    rng = random.Random(1)

    def text(lo: int, hi: int) -> str:
        return " ".join(rng.choice(words) for _ in range(log_uniform(rng, lo, hi)))

    pairs = [PreferencePair(id=str(i), index=i, prompt=[{"from": "human", "value": "<image>\n" + text(5, 30)}],
                            chosen=text(*spec["pair_words"]), rejected=text(*spec["pair_words"]),
                            image=draw_image(rng, *spec["image_px"]), meta={}) for i in range(spec["pairs"])]
    return PairDataset(pairs, PairEncoder(processor, template, max_length=max_length))


class DpoBench:
    """``run_dpo``'s pieces around one policy and one frozen reference copy, without loading or saving."""

    def __init__(self, args: argparse.Namespace, root: Path, overrides: Sequence[str] = ()):
        from mova.model.policy import policy_kind

        self.args, self.spec = args, SHAPES[args.shape]
        steps = args.warmup + args.steps
        self.cfg = run_config("dpo", model_dict(args.shape, args.dtype), root / "dpo",
                              train_overrides(args, root / "dpo-out", steps, self.spec["dpo_batch"]) + list(overrides))
        model, self.processor = build(self.cfg, args.device)
        self.kind = policy_kind(model)
        self.ref = copy.deepcopy(model).eval().requires_grad_(False) if self.cfg.dpo.reference == "copy" else None
        self.model, _ = self.kind.make_trainable(model, lora=self.cfg.train.lora,
                                                 train_fusion=self.cfg.dpo.train_fusion)
        template = self.kind.default_template(self.model, self.processor)
        self.dataset = pair_dataset(self.processor, template, self.spec, one_token_words(self.processor.tokenizer),
                                    self.cfg.data.max_length)
        self.ref_logps = None
        if self.cfg.dpo.reference == "precomputed":
            from mova.data.pairs import pair_collator
            from mova.trainers.dpo import precompute_reference

            collate = pair_collator(self.cfg.dpo.pair_encoding, self.processor.pad_token_id(),
                                    self.cfg.dpo.max_tokens_per_row)
            self.ref_logps = precompute_reference(self.model, self.dataset, collate, self.kind,
                                                  self.cfg.train.per_device_train_batch_size, args.device,
                                                  progress=False)

    def run(self, encoding: str) -> dict[str, float]:
        from mova.data.pairs import pair_collator
        from mova.trainers.dpo import DpoTrainer
        from mova.trainers.optim import part_options
        from mova.trainers.stages import training_arguments

        cfg = copy.deepcopy(self.cfg)
        cfg.dpo.pair_encoding = encoding
        log = StepLog()
        trainer = timed_trainer(DpoTrainer, log, self.args.clock, self.args.device)(
            model=self.model, args=training_arguments(cfg), train_dataset=self.dataset,
            data_collator=pair_collator(encoding, self.processor.pad_token_id(), cfg.dpo.max_tokens_per_row),
            group_by_modality_length=cfg.data.group_by_modality_length, part_options=part_options(cfg.train),
            dpo=cfg.dpo, kind=self.kind, ref_model=self.ref, ref_logps=self.ref_logps)
        with PeakMemory(self.args.device, interval=0.01, trim=False) as mem:
            trainer.train()
        del trainer
        free(self.args.device)
        timed = range(self.args.warmup, len(log.ends) - 1)
        seconds = sum(log.ends[i + 1] - log.ends[i] for i in timed)
        pairs = len(timed) * cfg.train.per_device_train_batch_size
        slots = sum(log.batches[i][2] for i in timed)
        return {"pairs_s": pairs / seconds, "step_ms": 1000 * seconds / max(len(timed), 1),
                "slots": slots / max(len(timed), 1), "peak_mib": mem.peak / 2**20}


def section_dpo(args: argparse.Namespace, root: Path, report: Report) -> None:
    bench = DpoBench(args, root)
    results = interleaved(["padded", "shared"], args.reps, guarded(lambda enc, rep: bench.run(enc), args.device))
    lines = ["| pair encoding | pairs/s | step ms | token slots / step | vs padded (pairs/s) | peak MiB |",
             "|" + "---|" * 6]
    for enc in ("padded", "shared"):
        rs = results[enc]
        if failed(rs) or failed(results["padded"]):
            lines.append(f"| {enc} | failed: {failed(rs) or failed(results['padded'])} |" + " |" * 4)
            continue
        speed = [r["pairs_s"] / b["pairs_s"] for r, b in zip(rs, results["padded"])]
        lines.append(f"| {enc} | {cell([r['pairs_s'] for r in rs], '.2f')} | {cell([r['step_ms'] for r in rs], ',.0f')}"
                     f" | {median([r['slots'] for r in rs]):,.0f} | {cell(speed, '.2f')}x "
                     f"| {max(r['peak_mib'] for r in rs):,.0f} |")
    report.add(f"DPO (DpoTrainer, LLM trained, reference copy, {bench.spec['dpo_batch']} pairs / step)",
               "\n".join(lines))


# --- PPO / GRPO ----------------------------------------------------------------------------------------------------
def rl_trainer(method: str, args: argparse.Namespace, root: Path, overrides: Sequence[str] = ()) -> Any:
    """A ``GrpoTrainer`` / ``PpoTrainer`` as ``mova train grpo|ppo`` builds it (fresh bench model, rule reward)."""
    from mova.trainers.grpo import GrpoTrainer
    from mova.trainers.ppo import PpoTrainer

    spec = SHAPES[args.shape]
    prompts = write_prompts(root / "prompts", spec["rl_prompts"] * 2, spec)
    rows = spec["rl_prompts"] * spec["rl_generations"]  # PPO samples as many prompts as GRPO samples responses
    sec = method
    extra = [f"data.data_path={prompts}", f"{sec}.reward_fn=word_fraction",
             f"{sec}.rollout_batch_size={spec['rl_prompts'] if method == 'grpo' else rows}",
             f"{sec}.mini_batch_size={min(spec['rl_minibatch'], rows)}",
             f"{sec}.max_new_tokens={spec['rl_new_tokens']}",
             f"train.gradient_checkpointing={spec['rl_ckpt']}"]
    extra += [f"grpo.num_generations={spec['rl_generations']}"] if method == "grpo" else \
        ["ppo.critic_pretrain_iterations=0", "ppo.ppo_epochs=1"]
    steps = args.warmup + args.reps
    cfg = run_config(method, model_dict(args.shape, args.dtype), root / method,
                     train_overrides(args, root / f"{method}-out", steps, 1) + extra + list(overrides))
    torch.manual_seed(0)
    return on_device(args.device, lambda: (GrpoTrainer if method == "grpo" else PpoTrainer)(cfg))


def rl_iteration(trainer: Any) -> dict[str, float]:
    """One iteration of ``PpoTrainer.train``'s loop (sample, score, optimise) without its reporting and saving."""
    torch.manual_seed(trainer.cfg.train.seed * 7919 + trainer.iteration * 31)
    batch, metrics = trainer.make_experience(trainer.prompt_batch(trainer.iteration))
    metrics.update(trainer.train_on(batch, False))
    trainer.iteration += 1
    return {k: metrics[f"time/{k}"] for k in ("generate", "score", "train")} | {
        "response_length": metrics.get("response_length", float("nan"))}


def section_rl(args: argparse.Namespace, root: Path, report: Report) -> None:
    spec = SHAPES[args.shape]
    lines = ["| method | samples / iteration | generate s | score s | train s | iteration s | generation share "
             "| tokens / response | peak MiB |", "|" + "---|" * 9]
    for method in ("grpo", "ppo"):
        trainer = rl_trainer(method, args, root)
        for _ in range(args.warmup):
            rl_iteration(trainer)
        with PeakMemory(args.device, interval=0.01, trim=False) as mem:
            its = [rl_iteration(trainer) for _ in range(args.reps)]
        total = [i["generate"] + i["score"] + i["train"] for i in its]
        share = [100 * i["generate"] / t for i, t in zip(its, total)]
        lines.append(f"| {method} | {trainer.samples_per_iteration()} | {cell([i['generate'] for i in its], '.2f')} "
                     f"| {cell([i['score'] for i in its], '.2f')} | {cell([i['train'] for i in its], '.2f')} "
                     f"| {cell(total, '.2f')} | {cell(share, '.0f')}% "
                     f"| {median([i['response_length'] for i in its]):.0f} "
                     f"| {mem.peak / 2**20:,.0f} |")
        del trainer
        free(args.device)
    ckpt = "on" if spec["rl_ckpt"] else "off"
    report.add(f"PPO / GRPO iteration (rule reward; {spec['rl_prompts']} prompts, up to {spec['rl_new_tokens']} new "
               f"tokens, activation checkpointing {ckpt}; {args.warmup} warm-up + {args.reps} timed iterations)",
               "\n".join(lines) + "\n\nGRPO and PPO run one after the other (not interleaved: both models would "
               "not fit beside each other at full shape); the shares compare phases of the same iterations. "
               "Wall clock (the trainers' own time/* metrics).")


# --- memory --------------------------------------------------------------------------------------------------------
#: (stage, option) -> overrides; each row runs ``--memory-row`` in its own process.
MEMORY_ROWS: dict[str, list[str]] = {
    "sft: full fine-tune, live experts": [],
    "sft: + activation checkpointing": ["train.gradient_checkpointing=true"],
    "sft: + cached features": ["cached"],
    "sft: LoRA r=16 (fusion trained)": ["train.lora.r=16"],
    "dpo: reference copy": [],
    "dpo: precomputed reference": ["dpo.reference=precomputed"],
    "dpo: LoRA r=16, adapters-off reference": ["train.lora.r=16", "dpo.reference=adapters_off"],
    "dpo: + activation checkpointing": ["train.gradient_checkpointing=true"],
    "grpo: full fine-tune": [],
    "grpo: + activation checkpointing": ["train.gradient_checkpointing=true"],
    "grpo: LoRA r=16, adapters-off reference": ["train.lora.r=16", "grpo.reference=adapters_off"],
    "ppo: separate critic": [],
    "ppo: shared critic trunk": ["ppo.critic=shared"],
}


def memory_row(args: argparse.Namespace, row: str, root: Path) -> dict[str, float]:
    """Build and run one stage with one option; peak memory from before the model is built to the end."""
    stage = row.split(":")[0]
    overrides = [o for o in MEMORY_ROWS[row] if o != "cached"]
    base_rss = _rss()
    with PeakMemory(args.device, interval=0.01, trim=False) as mem:
        if stage == "sft":
            lora = next((int(o.split("=")[1]) for o in overrides if o.startswith("train.lora.r=")), 0)
            bench = SftBench(args, root, lora=lora)
            cached = "cached" in MEMORY_ROWS[row]
            if cached:
                bench.features()
            ckpt = any(o == "train.gradient_checkpointing=true" for o in overrides)
            bench.run(SftVariant(row, packing=False, cached=cached, ckpt=ckpt))
        elif stage == "dpo":
            DpoBench(args, root, overrides).run("shared")
        else:
            trainer = rl_trainer(stage, args, root, overrides)
            for _ in range(2):
                rl_iteration(trainer)
    peak = mem.peak if args.device.type == "cuda" else mem.peak - base_rss
    return {"row": row, "peak_mib": peak / 2**20, "rss_mib": _rss() / 2**20}


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def section_memory(args: argparse.Namespace, report: Report) -> None:
    rows = [r for r in MEMORY_ROWS if not args.memory_rows or any(r.startswith(p) for p in args.memory_rows)]
    results = []
    for row in rows:
        if args.deadline and time.perf_counter() - START > args.deadline:
            results.append({"row": row, "error": f"not run: past --deadline {args.deadline:.0f} s"})
            continue
        if args.device.type == "cuda":  # the allocator's peak resets per row: no process of its own needed
            print(f"memory: {row} ...", file=sys.stderr, flush=True)
            free(args.device)
            saved, (args.warmup, args.steps) = (args.warmup, args.steps), (1, 1)
            with tempfile.TemporaryDirectory() as tmp:
                result = guarded(lambda name, rep: memory_row(args, name, Path(tmp)), args.device)(row, 0)
            args.warmup, args.steps = saved
            results.append({"row": row, **result})
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
            free(args.device)
            continue
        cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-row", row, "--shape", args.shape,
               "--device", args.device.type, "--dtype", args.dtype, "--warmup", "1", "--steps", "1",
               "--clock", "wall", "--workers", "0"]
        print(f"memory: {row} ...", file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = next((x for x in reversed(proc.stdout.splitlines()) if x.startswith("{")), None)
        if proc.returncode != 0 or line is None:
            results.append({"row": row, "error": (proc.stderr.strip().splitlines() or ["?"])[-1][:120]})
        else:
            results.append(json.loads(line))
    what = "torch.cuda.max_memory_allocated" if args.device.type == "cuda" else \
        "peak process RSS minus the RSS before the model was built (sampled every 10 ms)"
    lines = ["| stage: option | peak MiB | vs the stage's first row |", "|---|---|---|"]
    first: dict[str, float] = {}
    for r in results:
        stage = r["row"].split(":")[0]
        if "error" in r:
            lines.append(f"| {r['row']} | failed: {r['error']} | - |")
            continue
        first.setdefault(stage, r["peak_mib"])
        lines.append(f"| {r['row']} | {r['peak_mib']:,.0f} | {r['peak_mib'] / first[stage]:.2f}x |")
    lines.append("| ZeRO-2 / ZeRO-3 | n/a | one process: ZeRO shards optimizer states, gradients and weights "
                 "over processes, so with one there is nothing to shard (docs/distributed.md) |")
    where = "in turn, the allocator's peak reset per row" if args.device.type == "cuda" else "each row its own process"
    report.add(f"peak memory per stage ({where}: model build, then 1 warm-up + 1 step, or 2 RL iterations; {what})",
               "\n".join(lines))


# --- report --------------------------------------------------------------------------------------------------------
class Report:
    """Markdown sections, printed as they come (stderr) and together at the end (stdout)."""

    def __init__(self, header: str):
        self.header, self.parts = header, []

    def add(self, title: str, body: str) -> None:
        self.parts.append(f"### {title}\n\n{body}\n")
        print(self.parts[-1], file=sys.stderr, flush=True)

    def text(self) -> str:
        return "\n".join([self.header, *self.parts])


def describe(args: argparse.Namespace) -> str:
    from mova.config import ModelConfig, from_dict
    from mova.model.info import human, model_info

    info = model_info(from_dict(ModelConfig, model_dict(args.shape, args.dtype), "model"))
    experts = ", ".join(f"{r.name} {r.grid} ({r.tokens} tokens, {r.scheme}, {human(r.frozen_params)})"
                        for r in info["rows"])
    device = torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else \
        f"cpu ({torch.get_num_threads()} thread(s))"
    return (f"## bench_shape: shape `{args.shape}` on {device}\n\n"
            f"model: {experts}; fusion {human(info['fusion_params'])}; LLM {info['llm_type']} width "
            f"{info['llm_hidden']}, {human(info['llm_params'])} parameters; {args.dtype}.\n"
            f"timing: {args.reps} interleaved repetitions x ({args.warmup} warm-up + {args.steps} timed steps), "
            f"median (min-max); {'process CPU time' if args.clock_name == 'cpu' else 'wall clock'}; torch "
            f"{torch.__version__}.\nMFU peak: {args.peak_source}.\n")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="full", choices=sorted(SHAPES))
    p.add_argument("--sections", default="sft,dpo,rl", help="comma-separated: sft, dpo, rl (or none)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, help="model dtype (default: bfloat16 on a GPU, float32 on a CPU)")
    add_reps_argument(p)
    p.add_argument("--warmup", type=int, default=1, help="untimed steps at the start of each repetition")
    p.add_argument("--steps", type=int, default=3, help="timed steps per repetition")
    p.add_argument("--workers", type=int, default=None, help="dataloader workers (default: 4 on a GPU, 0 on a CPU)")
    p.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                   help="cpu: process CPU time (fairer on a shared CPU than wall time)")
    p.add_argument("--memory", action="store_true", help="also the peak-memory table (a process per row)")
    p.add_argument("--memory-rows", default="", help="comma-separated prefixes of the memory rows to run")
    p.add_argument("--memory-row", default=None, help=argparse.SUPPRESS)
    p.add_argument("--profile", action="store_true", help="torch profiler's top operators over SFT steps")
    p.add_argument("--profile-rows", type=int, default=15)
    p.add_argument("--out", default=None, help="also write the report (markdown) to this file")
    p.add_argument("--deadline", type=float, default=0,
                   help="seconds from start after which no further memory row is started (0: none)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--quick", action="store_true", help="smoke run: the quick shape, 2 reps of 1 + 1 steps")
    if p.parse_known_args(argv)[0].quick:
        p.set_defaults(shape="quick", reps=2, steps=1, warmup=1)
    args = p.parse_args(argv)
    args.device = torch.device(args.device)
    args.dtype = args.dtype or ("bfloat16" if args.device.type == "cuda" else "float32")
    args.workers = args.workers if args.workers is not None else (4 if args.device.type == "cuda" else 0)
    args.memory_rows = [r.strip() for r in args.memory_rows.split(",") if r.strip()]
    args.clock_name = args.clock
    args.clock = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    for name in ("mova", "transformers", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import warnings

    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        if args.memory_row:
            print(json.dumps(memory_row(args, args.memory_row, Path(tmp))))
            return
        from mova.model.builder import torch_dtype

        args.peak, args.peak_source = peak_flops(args.device, torch_dtype(args.dtype), args.clock)
        report = Report(describe(args))
        sections = {"sft": section_sft, "dpo": section_dpo, "rl": section_rl}
        for name in [s.strip() for s in args.sections.split(",") if s.strip() and s.strip() != "none"]:
            if name not in sections:
                raise SystemExit(f"unknown section {name!r} (sft, dpo, rl)")
            print(f"{name} ...", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            sections[name](args, Path(tmp) / name, report)
            print(f"{name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        if args.profile and "sft" not in args.sections:
            profile_sft(args, SftBench(args, Path(tmp) / "profile"), report)
        if args.memory:
            section_memory(args, report)
    print(report.text())
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(report.text())


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
