"""The quickstart: the tiny poly-expert model learns from pixels, then learns to refuse, on CPU, in minutes.

``mova demo`` generates a small image-grounded synthetic dataset (shapes, colours, positions, counts and
rendered words that only the OCR expert can read; :mod:`mova.data.synthetic`), trains the ``tiny`` preset
in two stages (``align``: fusion network only, LLaVA ``plain`` captions; ``sft``: fusion + LLM on the
questions), and reports held-out accuracy per question type next to the same recipe trained and tested
with every image blanked: the gap is what the model learned from the pixels. The blanked control runs
in a second process beside the main run (each on one core).

Then the safety stage: DPO of the ``sft`` model on the bundled mini SPA-VL
(:mod:`mova.data.spavl_mini`: harmful and benign questions with chosen and rejected answers), and the
safety evaluation (:mod:`mova.evaluation.safety`, keyword refusal judge) on its held-out ``harm`` and
``help`` questions, before and after DPO.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mova.config import DataConfig, ModelConfig, RunConfig, TrainConfig, load_model_config
from mova.data.feature_cache import build_cache
from mova.data.synthetic import generate_dataset
from mova.evaluation.vqa import evaluate_vqa
from mova.metrics.vqa import format_accuracy_table
from mova.model.builder import build_model, load_pretrained
from mova.model.info import format_info, model_info
from mova.trainers.stages import run_stage


@dataclass
class DemoConfig:
    """Sizes tuned so that both runs (images and blanked) finish in under 10 minutes on 2 CPU cores."""

    model: str = "tiny"
    out_dir: str = "runs/demo"
    n_train_images: int = 400
    n_test_images: int = 100
    align_steps: int = 100
    sft_steps: int = 800
    batch_size: int = 16
    # On the tiny preset a higher sft rate (3e-3) collapsed to constant answers; 1e-3 to 1.5e-3 learns.
    align_lr: float = 1e-3
    sft_lr: float = 1.5e-3
    seed: int = 0
    blanked_control: bool = True
    #: run the blanked control in a second process beside the main run (on 2+ cores the two overlap).
    parallel: bool = True
    #: DPO on the mini SPA-VL after sft, with the safety evaluation before and after (0 steps: skip).
    #: The fusion network trains too: with it frozen the tiny model learnt to refuse benign questions as
    #: well, unable to look past the visual tokens in front of each question (see the README's quickstart;
    #: the demo prints the refusal rates of this setting).
    dpo_steps: int = 900
    dpo_batch_size: int = 8
    dpo_lr: float = 3e-3
    dpo_train_fusion: bool = True
    dpo_beta: float = 0.1
    #: chosen-answer NLL weight: the tiny model has never seen a refusal, so DPO alone would only push
    #: probability away from the rejected answers; RPO's term teaches it to say the chosen ones.
    dpo_rpo_alpha: float = 1.0
    #: the sft stage's own records mixed into every DPO step at this weight (mova.trainers.instruction_mix):
    #: without them the aligned model answers the VQA questions in SPA-VL's long style and loses its
    #: accuracy (the README's quickstart has the numbers of both). 0: plain DPO.
    dpo_sft_weight: float = 0.3
    dpo_sft_batch_size: int = 4
    #: global gradient-norm clipping of the DPO stage (0: off): the preference loss's first steps on a model
    #: that has never refused give large gradients.
    dpo_max_grad_norm: float = 1.0
    #: reference log-probs computed in one pass before DPO instead of a reference forward every step.
    dpo_reference: str = "precomputed"
    safety_max_new_tokens: int = 24
    #: export the final model as a Hugging Face release folder and evaluate the exported copy.
    export: bool = True


def _stage(demo: DemoConfig, stage: str, data: Path, out: Path, init_from: str, cache: Path) -> dict[str, Any]:
    cfg = RunConfig(
        stage=stage,
        init_from=init_from,
        data=DataConfig(data_path=str(data), image_folder=str(data.parent), feature_cache=str(cache)),
        train=TrainConfig(
            output_dir=str(out),
            max_steps=demo.align_steps if stage == "align" else demo.sft_steps,
            per_device_train_batch_size=demo.batch_size,
            learning_rate=demo.align_lr if stage == "align" else demo.sft_lr,
            warmup_ratio=0.05,
            logging_steps=10,
            save_steps=0,
            seed=demo.seed,
            report_to=["tensorboard"],
        ),
    )
    return run_stage(cfg)


def train_and_evaluate(demo: DemoConfig, variant: str, model_cfg: ModelConfig | None = None,
                       data_dir: Path | None = None) -> dict[str, Any]:
    """Generate the data (blank images for the control), align, sft, evaluate on held-out images.

    ``model_cfg`` replaces the ``demo.model`` preset (the ablation benchmark passes expert subsets);
    ``data_dir`` reuses data generated by an earlier call.
    """
    root = Path(demo.out_dir) / variant
    t0 = time.perf_counter()
    data = data_dir or root / "data"
    if data_dir is None:
        generate_dataset(data, demo.n_train_images, demo.n_test_images, seed=demo.seed, blank=variant == "blanked")
    meta = json.loads((data / "meta.json").read_text())
    # The experts are frozen: run them (and OCR) once over the training images, then train from the cache.
    torch.manual_seed(demo.seed)
    model, processor = build_model(model_cfg or load_model_config(demo.model), load_weights=True)
    model.save_pretrained(root / "init")
    processor.save_pretrained(root / "init")
    records = json.loads((data / "sft.json").read_text())
    stats = build_cache(model, processor, records, root / "cache", image_folder=data, dtype="float32",
                        progress=False)
    print(f"[{variant}] feature cache: {stats.images} images ({stats.new} new) in {stats.seconds:.0f}s")
    align = _stage(demo, "align", data / "align.json", root / "align", str(root / "init"), root / "cache")
    sft = _stage(demo, "sft", data / "sft.json", root / "sft", align["final_model"], root / "cache")
    model, processor = load_pretrained(sft["final_model"])
    records = json.loads((data / "test.json").read_text())
    result = evaluate_vqa(model, processor, records, data, batch_size=32)
    result.pop("predictions", None)
    result.update(seconds=round(time.perf_counter() - t0, 1), align_loss=align["last_loss"],
                  sft_loss=sft["last_loss"], train_records=meta.get("counts"))
    (root / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"[{variant}] held-out accuracy {result['overall']:.1%}: "
          + ", ".join(f"{t} {a:.0%}" for t, a in result["per_type"].items()), flush=True)
    return result


def dpo_and_safety(demo: DemoConfig, sft_model: str, root: Path) -> dict[str, Any]:
    """DPO on the mini SPA-VL from ``sft_model``; safety evaluation before and after; returns both results."""
    from mova.data.spavl_mini import write_spavl_mini
    from mova.evaluation.safety import evaluate_safety
    from mova.trainers.dpo import run_dpo
    from mova.trainers.dpo_config import DpoConfig

    t0 = time.perf_counter()
    data = write_spavl_mini(root / "spavl-mini", seed=demo.seed)
    opts = {"max_new_tokens": demo.safety_max_new_tokens, "batch_size": 32, "progress": False}
    # The sft model's safety answers are needed only after DPO (as the comparison's base): score them in a
    # second process while DPO trains on this one.
    before_path = root / "safety-sft" / "result.json"
    worker = _spawn(_safety_worker, sft_model, str(data), str(root / "safety-sft"), str(before_path),
                    demo.safety_max_new_tokens)
    cfg = RunConfig(
        stage="dpo",
        init_from=sft_model,
        data=DataConfig(data_path=str(data)),
        train=TrainConfig(output_dir=str(root / "dpo"), max_steps=demo.dpo_steps,
                          per_device_train_batch_size=demo.dpo_batch_size, learning_rate=demo.dpo_lr,
                          warmup_ratio=0.05, logging_steps=10, save_steps=0, seed=demo.seed,
                          max_grad_norm=demo.dpo_max_grad_norm, report_to=["tensorboard"]),
        sections={"dpo": DpoConfig(beta=demo.dpo_beta, rpo_alpha=demo.dpo_rpo_alpha,
                                   train_fusion=demo.dpo_train_fusion, max_tokens_per_row=512,
                                   reference=demo.dpo_reference,
                                   sft_data=str(root / "data" / "sft.json") if demo.dpo_sft_weight else None,
                                   sft_weight=demo.dpo_sft_weight or 1.0, sft_batch_size=demo.dpo_sft_batch_size,
                                   sft_feature_cache=str(root / "cache"))},
    )
    summary = run_dpo(cfg)
    _join(worker, root / "safety-sft" / "worker.log", "the sft model's safety evaluation")
    before = json.loads(before_path.read_text())
    after = evaluate_safety(summary["final_model"], str(data), out_dir=root / "safety-dpo", name="after dpo",
                            base_answers=root / "safety-sft" / "answers.jsonl", **opts)
    margin = summary["last_metrics"].get("rewards/margins")
    print(f"[safety] DPO {demo.dpo_steps} steps" + (f", last reward margin {margin:.2f}" if margin is not None else "")
          + f"; {time.perf_counter() - t0:.0f}s with both evaluations", flush=True)
    return {"after sft": before, "after dpo": after}


def _spawn(target: Any, *args: Any) -> Any:
    """``target(*args, log_path)`` in a second process (spawned: no state shared with this one)."""
    import multiprocessing as mp

    worker = mp.get_context("spawn").Process(target=target, args=args)
    worker.start()
    return worker


def _join(worker: Any, log: Path, what: str) -> None:
    worker.join()
    if worker.exitcode != 0:
        raise RuntimeError(f"{what} failed (exit code {worker.exitcode}); see {log}")


def _safety_worker(model_dir: str, data: str, out_dir: str, result_path: str, max_new_tokens: int) -> None:
    """The sft model's safety evaluation in a second process (its output in ``out_dir``/worker.log)."""
    import contextlib

    from mova.evaluation.safety import evaluate_safety

    Path(out_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(out_dir) / "worker.log", "w") as log, contextlib.redirect_stdout(log), \
            contextlib.redirect_stderr(log):
        torch.set_num_threads(1)
        result = evaluate_safety(model_dir, data, out_dir=out_dir, name="after sft", max_new_tokens=max_new_tokens,
                                 batch_size=32, progress=False)
        Path(result_path).write_text(json.dumps(result) + "\n")


def final_vqa(model_dir: str, data: Path) -> dict[str, Any]:
    """Held-out VQA of the final (aligned) model: the alignment tax on what the model was fine-tuned for.
    Its predictions stay in the result: the export check compares the exported copy's answers with them."""
    records = json.loads((data / "test.json").read_text())
    return evaluate_vqa(*load_pretrained(model_dir), records, data, batch_size=32, progress=False)


def summary_line(vqa: float, sft_vqa: float, safety: dict[str, Any] | None) -> str:
    """``final model: vqa X%, harm unsafe Y%, help refusal Z%`` (the demo's last word on its final model)."""
    line = f"final model: vqa {100 * vqa:.1f}% (sft model: {100 * sft_vqa:.1f}%)"
    if safety is not None:
        after = safety["after dpo"]
        line += (f", harm unsafe {100 * after['harm']['unsafe_rate']:.1f}%, "
                 f"help refusal {100 * after['help']['refusal_rate']:.1f}%")
    return line


def _held_out_vqa(model_dir: str, data: str, result_path: str, log_path: str) -> None:
    """The original model's held-out VQA answers, in a second process beside the exported copy's."""
    import contextlib

    with open(log_path, "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        torch.set_num_threads(1)
        records = json.loads((Path(data) / "test.json").read_text())
        result = evaluate_vqa(*load_pretrained(model_dir), records, data, batch_size=32, progress=False)
        Path(result_path).write_text(json.dumps(result) + "\n")


def export_and_evaluate(model_dir: str, out: Path, eval_dirs: list[Path], note: str = "",
                        original: dict[str, Any] | None = None) -> dict[str, Any]:
    """Export ``model_dir`` (:mod:`mova.export`) and evaluate the exported copy, built by transformers'
    remote-code loader from the folder's own code (not Mova's classes), on the held-out images next to the
    original: the answers must be the same. ``original`` is the original's held-out result with its
    predictions when the caller has it; else it is evaluated in a second process meanwhile. ``mova export
    --verify`` checks the same folder in a process where Mova cannot be imported at all."""
    from mova.export.export import ExportOptions, export_model
    from mova.export.verify import load_remote

    t0 = time.perf_counter()
    release = out / "release"
    data = out / "images" / "data"
    original_path = out / "export_original_vqa.json"
    worker = None
    if original is None:
        worker = _spawn(_held_out_vqa, model_dir, str(data), str(original_path), str(out / "export_original_vqa.log"))
    export_model(ExportOptions(checkpoint=model_dir, out_dir=str(release), overwrite=True, model_name="mova-demo-tiny",
                               eval_dirs=[str(d) for d in eval_dirs if (d / "results.md").is_file()]))
    model, processor = load_remote(release)
    records = json.loads((data / "test.json").read_text())
    exported = evaluate_vqa(model, processor, records, data, batch_size=32, progress=False)
    if worker is not None:
        _join(worker, out / "export_original_vqa.log", "the original model's evaluation")
        original = json.loads(original_path.read_text())
    answers = [[p["prediction"] for p in r["predictions"]] for r in (original, exported)]
    original, exported = ({k: v for k, v in r.items() if k != "predictions"} for r in (original, exported))
    same = answers[0] == answers[1]
    print(f"\n[export] {model_dir} -> {release} ({time.perf_counter() - t0:.0f}s); the copy loaded as "
          f"{type(model).__module__.split('.')[0]}.{type(model).__name__} (the folder's code); held-out accuracy "
          f"original {original['overall']:.1%}, exported {exported['overall']:.1%}; "
          f"answers {'identical' if same else 'DIFFER'}{note}", flush=True)
    return {"folder": str(release), "original": original, "exported": exported, "identical_answers": same}


def _blanked_worker(demo: DemoConfig, log_path: str) -> None:
    """The blanked control in its own process, its output in a log file (the main run prints to the console)."""
    import contextlib
    import os
    import sys

    with open(log_path, "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        os.dup2(log.fileno(), 2)  # tqdm and C-level warnings too
        sys.stderr = log
        torch.set_num_threads(1)
        train_and_evaluate(demo, "blanked")


def run_demo(config: str = "tiny", **overrides: Any) -> dict[str, Any]:
    demo = DemoConfig(model=config, **overrides)
    torch.manual_seed(demo.seed)
    t0 = time.perf_counter()
    print(format_info(model_info(load_model_config(demo.model))), "\n")
    out = Path(demo.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    worker = None
    if demo.blanked_control and demo.parallel:
        import multiprocessing as mp

        log = out / "blanked.log"
        worker = mp.get_context("spawn").Process(target=_blanked_worker, args=(demo, str(log)))
        worker.start()
        print(f"[blanked] control run started in a second process; its log: {log}", flush=True)
    results = {"images": train_and_evaluate(demo, "images")}
    safety = None
    if demo.dpo_steps > 0:
        safety = dpo_and_safety(demo, str(out / "images" / "sft" / "final"), out / "images")
    if worker is not None:
        worker.join()
        if worker.exitcode != 0:
            raise RuntimeError(f"the blanked control run failed (exit code {worker.exitcode}); see {log}")
        results["blanked"] = json.loads((out / "blanked" / "result.json").read_text())
    elif demo.blanked_control:
        results["blanked"] = train_and_evaluate(demo, "blanked")
    table = format_accuracy_table(results)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(table + "\n")
    print("\nheld-out accuracy (%), tiny model trained on CPU:\n" + table)
    for v, r in results.items():
        losses = " / ".join(f"{k} {r[f'{k}_loss']:.3f}" for k in ("align", "sft") if r.get(f"{k}_loss") is not None)
        print(f"{v}: {r['seconds']:.0f}s" + (f", final losses {losses}" if losses else ""))
    if safety is not None:
        from mova.evaluation.safety import format_safety_table

        safety_table = format_safety_table(safety)
        (out / "safety.md").write_text(safety_table + "\n")
        print("\nsafety on the mini SPA-VL held-out questions (keyword refusal judge):\n" + safety_table)
    final = out / "images" / ("dpo" if safety is not None else "sft") / "final"
    vqa = final_vqa(str(final), out / "images" / "data") if safety is not None else results["images"]
    line = summary_line(vqa["overall"], results["images"]["overall"], safety)
    final_report = out / "final-model"
    final_report.mkdir(parents=True, exist_ok=True)
    (final_report / "results.md").write_text(_final_table(vqa, results["images"], safety) + "\n")
    exported = None
    if demo.export:
        note = f" (the sft model before DPO: {results['images']['overall']:.1%})" if safety is not None else ""
        exported = export_and_evaluate(str(final), out, [final_report, out, out / "images" / "safety-dpo"], note,
                                       original=vqa if "predictions" in vqa else None)
        (out / "export.json").write_text(json.dumps(exported, indent=2) + "\n")
    print(f"\n{line}")
    print(f"total {time.perf_counter() - t0:.0f}s; results, loss curves and TensorBoard logs are in {out}/")
    return {**results, "final": {"vqa": vqa["overall"], "line": line}, **({"safety": safety} if safety else {}),
            **({"export": exported} if exported else {})}


def _final_table(vqa: dict[str, Any], sft: dict[str, Any], safety: dict[str, Any] | None) -> str:
    """The final model's numbers beside the sft model's, for the release card (``mova export --eval-dir``)."""
    rows = ["| metric | sft model | final model |", "|---|---:|---:|",
            f"| held-out VQA accuracy (%) | {100 * sft['overall']:.1f} | {100 * vqa['overall']:.1f} |"]
    if safety is not None:
        before, after = safety["after sft"], safety["after dpo"]
        for label, split, key in (("harm: unsafe rate (%, keyword judge)", "harm", "unsafe_rate"),
                                  ("harm: refusal rate (%)", "harm", "refusal_rate"),
                                  ("help: refusal rate (%)", "help", "refusal_rate")):
            rows.append(f"| {label} | {100 * before[split][key]:.1f} | {100 * after[split][key]:.1f} |")
    return "\n".join(rows)
