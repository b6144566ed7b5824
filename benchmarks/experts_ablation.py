"""The expert ablation at CPU scale: what each expert and each position scheme costs or buys.

Trains the tiny model (align then sft, the demo's recipe) on the same synthetic data with each expert set
and each position scheme, then prints held-out accuracy per question type next to the positions each
image consumes. Shapes, colours, positions and counts need a pixel expert; the rendered words need the
OCR expert; compressed schemes save positions.

    python benchmarks/experts_ablation.py                 # all runs (minutes each on 2 cores; each prints its time)
    python benchmarks/experts_ablation.py --runs clip ocr clip+ocr --sft-steps 200
    python benchmarks/experts_ablation.py --quick --out-dir /tmp/ablation-quick   # smoke run: 2 runs, a few steps
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mova.config import ModelConfig, from_dict
from mova.data.synthetic import generate_dataset
from mova.demo import DemoConfig, train_and_evaluate
from mova.model.info import model_info
from mova.presets import preset_dict

#: run name -> (experts kept from the tiny preset, SAM's position scheme)
RUNS: dict[str, tuple[tuple[str, ...], str]] = {
    "clip": (("clip",), "full"),
    "sam": (("sam",), "share_by_row"),
    "ocr": (("ocr_text",), "full"),
    "clip+ocr": (("clip", "ocr_text"), "full"),
    "clip+sam": (("clip", "sam"), "share_by_row"),
    "clip+sam+ocr": (("clip", "sam", "ocr_text"), "share_by_row"),
    "all experts": (("clip", "sam", "layoutlmv3", "timm", "ocr_text"), "share_by_row"),
    "clip+sam+ocr, sam full": (("clip", "sam", "ocr_text"), "full"),
    "clip+sam+ocr, sam share_by_col": (("clip", "sam", "ocr_text"), "share_by_col"),
    "clip+sam+ocr, sam share_all": (("clip", "sam", "ocr_text"), "share_all"),
}
TYPES = ("shape", "color", "position", "count", "word")


def model_config(experts: tuple[str, ...], sam_scheme: str) -> ModelConfig:
    data = preset_dict("tiny")
    data["experts"] = [e for e in data["experts"] if e["family"] in experts]
    for e in data["experts"]:
        if e["family"] == "sam":
            e["position_scheme"] = sam_scheme
    return from_dict(ModelConfig, data, "model")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="*", default=list(RUNS), help=f"subset of: {', '.join(RUNS)}")
    parser.add_argument("--out-dir", default="runs/ablation")
    parser.add_argument("--train-images", type=int, default=400)
    parser.add_argument("--test-images", type=int, default=100)
    parser.add_argument("--align-steps", type=int, default=120)
    parser.add_argument("--sft-steps", type=int, default=360)
    parser.add_argument("--quick", action="store_true", help="tiny sizes and a few steps: checks the script runs")
    if parser.parse_known_args(argv)[0].quick:  # quick sizes are defaults: explicit arguments still win
        parser.set_defaults(runs=["ocr", "clip+sam"], train_images=8, test_images=4, align_steps=2, sft_steps=2)
    args = parser.parse_args(argv)
    demo = DemoConfig(out_dir=args.out_dir, n_train_images=args.train_images, n_test_images=args.test_images,
                      align_steps=args.align_steps, sft_steps=args.sft_steps)
    data = Path(args.out_dir) / "data"
    generate_dataset(data, demo.n_train_images, demo.n_test_images, seed=demo.seed)
    rows = []
    for name in args.runs:
        experts, scheme = RUNS[name]
        cfg = model_config(experts, scheme)
        info = model_info(cfg)
        result = train_and_evaluate(demo, name.replace(" ", "_").replace(",", ""), cfg, data_dir=data)
        rows.append((name, result, info))
        print(f"{name}: overall {result['overall']:.1%} ({result['seconds']:.0f}s)", flush=True)
    head = ["run", *TYPES, "overall", "positions/image", "visual tokens/image"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r, info in rows:
        accs = [f"{100 * r['per_type'].get(t, 0):.0f}" for t in TYPES]
        pos = f"{info['positions_min']}-{info['positions_max']}" if info["positions_min"] != info["positions_max"] \
            else str(info["positions_min"])
        tok = f"{info['tokens_min']}-{info['tokens_max']}" if info["tokens_min"] != info["tokens_max"] \
            else str(info["tokens_min"])
        lines.append("| " + " | ".join([name, *accs, f"{100 * r['overall']:.1f}", pos, tok]) + " |")
    table = "\n".join(lines)
    print("\nheld-out accuracy (%) per question type, tiny model, CPU\n" + table)
    (Path(args.out_dir) / "ablation.md").write_text(table + "\n")
    (Path(args.out_dir) / "ablation.json").write_text(json.dumps({n: r for n, r, _ in rows}, indent=2, default=str))


if __name__ == "__main__":
    main()
