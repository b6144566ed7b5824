"""DPO throughput: Mova's trainer vs TRL's DPOTrainer, pair-shared VLM encoding, precomputed references.

Three comparisons, each variant in its own subprocess (so that one run's memory never shows in
another's peak), printed as one markdown table:

1. ``text``: the same model (``--model``: a tiny random Llama, 4 layers of width 256, or a real one such as
   ``smollm2-135m-instruct``), the same pairs (prompts of 10-60 words, responses of 10-120, as raw text: no
   chat template on either side), batch 8, a frozen reference copy in both, fp32 without activation checkpointing
   in both (TRL's DPOConfig turns on bf16 and checkpointing by default; they are turned off here): TRL
   1.16 ``DPOTrainer`` (padded ``[chosen; rejected]`` rows) vs ``mova train dpo`` (prompt once per pair,
   responses packed as a tree, no padding). pairs/s over ``--steps`` optimiser steps, from each
   trainer's own ``train_runtime``.
2. ``vlm``: DPO on a Mova model whose experts dominate the step (the ``mid`` config of
   ``train_throughput.py``: a 4-layer CLIP at 224 px and a 4-layer SAM-like encoder at 512 px before the
   tiny LLM), with ``pair_encoding=shared`` (each image through the experts and fusion once per pair) vs
   ``padded`` (once per response, the usual layout).
3. ``reference``: the text model with ``reference=precomputed`` (one scoring pass before training,
   included in the time) vs a live reference copy.
4. ``rows``: why pair rows are short (``dpo.max_tokens_per_row``): one forward + backward of the text model
   over the same batches of pairs laid out as trees in rows of 512 and 1024 tokens, all in one row, and
   as the padded ``[chosen; rejected]`` batch (a dense tree mask costs the square of the row length).

Every comparison runs its variants in turns, ``--reps`` times each (A B, B A, ...: ``benchmarks/_timing.py``
says why), and prints the median with the min-max of the repetitions; a speed-up is the ratio of the
medians, with the range of the per-repetition ratios beside it.

Peak memory: CUDA's allocator peak on a GPU; on a CPU the peak resident set minus the resident set just
before (sampled every 2 ms), from loading the models to the end of training in ``text`` and
``reference`` (both trainers load a policy and a reference), over the timed steps in ``vlm``.

Usage::

    python benchmarks/dpo.py                            # text, vlm and reference, CPU
    python benchmarks/dpo.py --only text --steps 20
    python benchmarks/dpo.py --only text --model smollm2-135m-instruct --steps 3 --reps 3
    python benchmarks/dpo.py --only rows --steps 5      # the row-length sweep
    python benchmarks/dpo.py --quick                    # smoke run: every comparison, tiny sizes, 2 reps
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _timing import add_reps_argument, interleaved, ratio_cell, stat  # noqa: E402

WORDS = ("the model image safe answer question data red blue green house tree river city light paper stone "
         "music table window garden doctor market travel winter summer morning evening simple careful").split()
BATCH = 8  # pairs per step (--batch)


def _text(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def write_text_pairs(path: Path, n: int, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows = [{"prompt": _text(rng, 10, 60) + "\n", "chosen": _text(rng, 10, 120), "rejected": _text(rng, 10, 120)}
            for _ in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def model_folder(root: Path, name: str) -> Path:
    """The text comparison's model: ``tiny`` (a random Llama built in ``root``) or a known / local model."""
    if name == "tiny":
        return root / "llama"
    from mova.model.checkpoints import resolve_checkpoint

    return Path(resolve_checkpoint(name, "--model"))


def tiny_llama(root: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from mova.presets import TINY_TOKENIZER

    tok = PreTrainedTokenizerFast.from_pretrained(str(TINY_TOKENIZER))
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048,
                      tie_word_embeddings=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                      bos_token_id=tok.bos_token_id, attn_implementation="sdpa")
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(root / "llama")
    tok.save_pretrained(root / "llama")
    return root / "llama"


class Peak:
    """Peak memory a block adds (see the module docstring)."""

    def __init__(self) -> None:
        import torch
        from _timing import PeakMemory  # the sampler every benchmark uses

        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.inner = PeakMemory(self.device)

    def __enter__(self) -> Peak:
        import psutil

        self.start = 0 if self.device.type == "cuda" else psutil.Process().memory_info().rss
        self.inner.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.inner.__exit__(*exc)
        self.mib = (self.inner.peak - self.start) / 2**20


# --- one variant per subprocess -------------------------------------------------------------------
def run_trl(root: Path, steps: int, batch: int, model_name: str = "tiny") -> dict[str, Any]:
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = [json.loads(line) for line in (root / "pairs.jsonl").read_text().splitlines()]
    with Peak() as peak:  # from loading on, as for Mova (whose run_dpo loads, copies and trains)
        folder = model_folder(root, model_name)
        tok = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa")
        ref = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa")
        args = trl.DPOConfig(output_dir=str(root / "trl"), per_device_train_batch_size=batch, max_steps=steps,
                             learning_rate=1e-5, report_to=[], use_cpu=not torch.cuda.is_available(),
                             max_length=None, logging_steps=steps, save_strategy="no", disable_tqdm=True, seed=0,
                             # TRL's DPOConfig defaults to bf16 and activation checkpointing; Mova's run
                             # here uses neither, so both run fp32 without recomputation.
                             bf16=False, gradient_checkpointing=False)
        trainer = trl.DPOTrainer(model=model, ref_model=ref, args=args, processing_class=tok,
                                 train_dataset=Dataset.from_list(rows))
        out = trainer.train()
    return {"runtime": out.metrics["train_runtime"], "train_s": out.metrics["train_runtime"], "mib": peak.mib}


def run_mova_text(root: Path, steps: int, batch: int, reference: str, model_name: str = "tiny") -> dict[str, Any]:
    from mova.config import DataConfig, RunConfig, TrainConfig
    from mova.trainers import dpo as dpo_mod
    from mova.trainers.dpo_config import DpoConfig

    # template "raw": prompt + response as plain text, the tokens TRL's DPOTrainer builds for these pairs
    cfg = RunConfig(stage="dpo", init_from=str(model_folder(root, model_name)),
                    data=DataConfig(data_path=str(root / "pairs.jsonl"), group_by_modality_length=False,
                                    template="raw"),
                    train=TrainConfig(output_dir=str(root / f"mova-{reference}"), max_steps=steps,
                                      per_device_train_batch_size=batch, learning_rate=1e-5, save_steps=0,
                                      logging_steps=steps, report_to=[], warmup_ratio=0.0),
                    sections={"dpo": DpoConfig(reference=reference)})
    with Peak() as peak:
        t0 = time.perf_counter()
        summary = dpo_mod.run_dpo(cfg)
        total = time.perf_counter() - t0
    # precomputed: the scoring pass runs before train(); count it (its share of the end-to-end time).
    runtime = summary["train_runtime_s"] + (summary.get("reference_seconds") or 0.0)
    return {"runtime": runtime, "train_s": summary["train_runtime_s"], "mib": peak.mib, "end_to_end": total,
            "reference_s": summary.get("reference_seconds") or 0.0}


def run_vlm(root: Path, steps: int, batch: int, encoding: str, config: str = "mid") -> dict[str, Any]:
    import torch
    from train_throughput import model_config

    from mova.data.pairs import PairEncoder, pair_collator
    from mova.model.builder import build_model
    from mova.trainers.dpo_config import DpoConfig
    from mova.trainers.dpo_loss import dpo_loss
    from tests.conftest import random_image

    torch.manual_seed(0)
    model, processor = build_model(model_config(config, "fp32"), load_weights=False)
    model.requires_grad_(False)
    model.language_model.requires_grad_(True)
    ref = __import__("copy").deepcopy(model).eval()
    rng = random.Random(0)
    from mova.data.preference import PreferencePair

    pairs = [PreferencePair(id=str(i), index=i, prompt=[{"from": "human", "value": "<image>\n" + _text(rng, 10, 60)}],
                            chosen=_text(rng, 10, 120), rejected=_text(rng, 10, 120), image=random_image(i, (256, 256)),
                            meta={}) for i in range(batch * (steps + 1))]
    enc = PairEncoder(processor, model.config.template)
    collate = pair_collator(encoding, processor.tokenizer.pad_token_id, DpoConfig().max_tokens_per_row)
    batches = [collate([enc.encode(p) for p in pairs[i:i + batch]]) for i in range(0, len(pairs), batch)]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    from mova.data.pairs import response_logps

    def step(b: dict[str, Any]) -> None:
        pc, pr, _, _ = response_logps(model, b, batch)
        with torch.no_grad():
            rc, rr, _, _ = response_logps(ref, b, batch)
        dpo_loss(pc, pr, rc, rr).losses.mean().backward()
        opt.step()
        opt.zero_grad()

    step(batches[0])  # warm-up
    with Peak() as peak:
        t0 = time.perf_counter()
        for b in batches[1:]:
            step(b)
        runtime = time.perf_counter() - t0
    return {"runtime": runtime, "train_s": runtime, "mib": peak.mib}


#: layout name -> (pair encoding, tokens per row); None: every pair of the batch in one row.
ROW_LAYOUTS: dict[str, tuple[str, int | None]] = {
    "tree, rows of 512": ("shared", 512), "tree, rows of 1024": ("shared", 1024),
    "tree, one row": ("shared", None), "padded [chosen; rejected]": ("padded", None)}


def run_rows(root: Path, steps: int, batch: int, reps: int = 1, model_name: str = "tiny") -> dict[str, Any]:
    """Seconds per forward + backward (policy only) of each row layout over the same ``steps`` batches, ``reps``
    passes; the layouts take turns batch by batch (the order rotating), after one warm-up pass each."""
    import statistics

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mova.data.pairs import PairEncoder, pair_collator, response_logps
    from mova.data.preference import load_text_preferences

    folder = model_folder(root, model_name)
    tok = AutoTokenizer.from_pretrained(folder)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa")
    enc = PairEncoder(tok, "raw")
    encoded = [enc.encode(p) for p in load_text_preferences(root / "pairs.jsonl")][:batch * steps]
    groups = [encoded[i:i + batch] for i in range(0, len(encoded), batch)]
    longest = max(p.num_tokens for p in encoded) * batch
    batches = {name: [pair_collator(kind, tok.pad_token_id, tokens or longest)(g) for g in groups]
               for name, (kind, tokens) in ROW_LAYOUTS.items()}

    def step(b: dict[str, Any], n: int) -> None:
        chosen, rejected, _, _ = response_logps(model, b, n)
        (chosen.sum() + rejected.sum()).backward()
        model.zero_grad(set_to_none=True)

    seconds: dict[str, list[float]] = {name: [] for name in ROW_LAYOUTS}
    cpu: dict[str, list[float]] = {name: [] for name in ROW_LAYOUTS}
    for name in ROW_LAYOUTS:
        step(batches[name][0], len(groups[0]))
    def one(name: str, k: int) -> None:  # the k-th timed step: batch k mod steps, a pass per len(groups) steps
        t0, c0 = time.perf_counter(), time.process_time()
        step(batches[name][k % len(groups)], len(groups[k % len(groups)]))
        seconds[name].append(time.perf_counter() - t0)
        cpu[name].append(time.process_time() - c0)

    interleaved(list(ROW_LAYOUTS), reps * len(groups), one)
    return {"tokens_per_pair": statistics.mean(p.num_tokens for p in encoded),
            "layouts": {name: {"seconds": seconds[name], "cpu": cpu[name],
                               "rows": statistics.mean(b["input_ids"].shape[0] for b in batches[name]),
                               "width": statistics.mean(b["input_ids"].shape[1] for b in batches[name])}
                        for name in ROW_LAYOUTS}}


VARIANTS = {
    "text/trl": lambda root, a: run_trl(root, a.steps, a.batch, a.model),
    "text/mova": lambda root, a: run_mova_text(root, a.steps, a.batch, "copy", a.model),
    "vlm/padded": lambda root, a: run_vlm(root, a.steps, a.batch, "padded", a.vlm_config),
    "vlm/shared": lambda root, a: run_vlm(root, a.steps, a.batch, "shared", a.vlm_config),
    "reference/live": lambda root, a: run_mova_text(root, a.steps, a.batch, "copy", a.model),
    "reference/precomputed": lambda root, a: run_mova_text(root, a.steps, a.batch, "precomputed", a.model),
    "rows/sweep": lambda root, a: run_rows(root, a.steps, a.batch, a.reps, a.model),
}
COMPARISONS = {"text": ("text/trl", "text/mova"), "vlm": ("vlm/padded", "vlm/shared"),
               "reference": ("reference/live", "reference/precomputed"), "rows": ("rows/sweep",)}


def _in_subprocess(variant: str, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One variant in a fresh process (its memory never shows in another's peak); its RESULT line."""
    proc = subprocess.run([sys.executable, __file__, "--one", variant, "--root", str(root), "--steps", str(args.steps),
                           "--batch", str(args.batch), "--vlm-config", args.vlm_config, "--model", args.model,
                           "--reps", str(args.reps)], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        raise SystemExit(f"{variant} failed (exit code {proc.returncode}):\n{proc.stdout[-2000:]}\n"
                         f"{proc.stderr[-4000:]}")
    print(f"{variant}: {line[7:]}", file=sys.stderr, flush=True)
    return json.loads(line[7:])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="text,vlm,reference", help="comma-separated: text, vlm, reference, rows")
    p.add_argument("--steps", type=int, default=20, help="optimiser steps per run (rows: batches timed per pass)")
    p.add_argument("--batch", type=int, default=BATCH, help="pairs per step")
    p.add_argument("--model", default="tiny",
                   help="text, reference and rows comparisons: tiny (a random Llama) or a model folder / known name "
                        "(smollm2-135m-instruct)")
    p.add_argument("--vlm-config", default="mid", help="the vlm comparison's model (train_throughput's configs)")
    add_reps_argument(p)
    p.add_argument("--out", default=None, help="working folder (default: a new temporary one)")
    p.add_argument("--in-process", action="store_true",
                   help="run the variants in this process (faster; peak memory then includes earlier variants)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: every comparison, tiny sizes, one step, 2 reps in turns, in this process")
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    if p.parse_known_args(argv)[0].quick:  # quick sizes are defaults: explicit arguments still win
        p.set_defaults(only="text,vlm,reference,rows", steps=1, batch=2, vlm_config="tiny", in_process=True, reps=2)
    args = p.parse_args(argv)
    if args.one:
        result = VARIANTS[args.one](Path(args.root), args)
        print("RESULT " + json.dumps(result))
        return
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="mova-dpo-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    write_text_pairs(root / "pairs.jsonl", args.batch * (args.steps + 2))
    if args.model == "tiny":
        tiny_llama(root)
    rows, sweep = [], None
    names = args.only.split(",")
    run = (lambda variant: VARIANTS[variant](root, args)) if args.in_process else \
        (lambda variant: _in_subprocess(variant, root, args))
    for name in names:
        if name not in COMPARISONS:
            raise SystemExit(f"unknown comparison {name!r}; known: {', '.join(COMPARISONS)}")
    for name in names:
        if name == "rows":
            sweep = run("rows/sweep")
            continue
        base, ours = COMPARISONS[name]
        res = interleaved((base, ours), args.reps, lambda variant, _rep: run(variant),
                          lambda variant, rep, r: print(f"{variant} rep {rep + 1}: {r['runtime']:.1f} s, "
                                                        f"{r['mib']:.0f} MiB", file=sys.stderr, flush=True))
        pps = {v: stat([args.batch * args.steps / r["runtime"] for r in res[v]]) for v in (base, ours)}
        mib = {v: stat([r["mib"] for r in res[v]]) for v in (base, ours)}
        for variant in (base, ours):
            scoring = [r.get("reference_s", 0.0) for r in res[variant]]
            note = f"scoring pass {stat(scoring).cell('.1f')} s" if any(scoring) else ""
            rows.append((name, variant.split("/")[1], pps[variant].cell(), stat([r["train_s"] for r in res[variant]]),
                         mib[variant].cell(".0f"), ratio_cell(pps[variant], pps[base]),
                         ratio_cell(mib[variant], mib[base]), note))
    if rows:
        where = "all in one process: peak memory not comparable" if args.in_process else "each in its own process"
        model = f", text model {args.model}" if any(r[0] in ("text", "reference") for r in rows) else ""
        print(f"\nDPO throughput, batch {args.batch} pairs, {args.steps} steps per run{model}, {args.reps} runs of "
              f"each variant in turns, {where}; median (min-max) of the runs, ratios of medians (range of per-run "
              f"ratios)\n")
        print("| comparison | variant | pairs/s | train loop s | peak MiB added | speed-up | memory vs first | note |")
        print("|---|---|---:|---:|---:|---:|---:|---|")
        for name, variant, pps_cell, train_s, mib_cell, speed, mem, note in rows:
            print(f"| {name} | {variant} | {pps_cell} | {train_s.cell('.1f')} | {mib_cell} | {speed} | {mem} "
                  f"| {note} |")
    if sweep is not None:
        base = stat(sweep["layouts"]["padded [chosen; rejected]"]["seconds"])
        print(f"\nDPO row layouts: forward + backward of the text model ({args.model}), {args.batch} pairs of "
              f"{sweep['tokens_per_pair']:.0f} tokens on average, {args.steps} batches x {args.reps} passes, layouts "
              f"in turns; median (min-max) over those steps\n")
        print("| layout | rows x width (token slots) | s per forward + backward | CPU s | speed-up vs padded |")
        print("|---|---|---:|---:|---:|")
        for name, r in sweep["layouts"].items():
            slots = f"{r['rows']:.1f} x {r['width']:.0f} ({r['rows'] * r['width']:,.0f})"
            sec = stat(r["seconds"])
            print(f"| {name} | {slots} | {sec.cell()} | {stat(r['cpu']).cell()} | {ratio_cell(base, sec)} |")


if __name__ == "__main__":
    main()
