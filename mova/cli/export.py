"""``mova export``: a checkpoint as a Hugging Face release folder, optionally checked and uploaded."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from mova.cli.command import Command
from mova.errors import ConfigError


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", nargs="?", help="a Mova model folder (a stage's final/ or checkpoint-N/)")
    p.add_argument("--out", help="the release folder to write")
    p.add_argument("--merge-lora", action="store_true", help="merge LoRA adapters left unmerged by training")
    p.add_argument("--lora-alpha", type=float, default=None,
                   help="the adapters' alpha when the run's summary.json is not beside the checkpoint")
    p.add_argument("--dtype", default=None, help="cast the weights: bf16, fp16 or fp32 (default: as saved)")
    p.add_argument("--max-shard-size", default="5GB", help="safetensors shard size (default: 5GB)")
    p.add_argument("--eval-dir", action="append", default=[],
                   help="an evaluation output folder (results.md) for the card; repeatable")
    p.add_argument("--run-dir", action="append", default=[],
                   help="a training run folder (summary.json) for the card's recipe, besides the checkpoint's own")
    p.add_argument("--name", default=None, help="the model's name in the card (default: the Hub repo or folder name)")
    p.add_argument("--license", default=None, help="license id for the card's metadata (e.g. apache-2.0)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty folder")
    p.add_argument("--verify", action="store_true",
                   help="load the folder in a fresh process without Mova and compare its logits with Mova's")
    p.add_argument("--push-to-hub", metavar="REPO", default=None, help="upload the folder to this Hub repo")
    p.add_argument("--private", action="store_true", help="create the Hub repo as private")
    p.add_argument("--revision", default=None, help="Hub branch to upload to")
    p.add_argument("--push-only", metavar="DIR", default=None,
                   help="upload an already exported folder (with --push-to-hub), exporting nothing")


def _verify(folder: Path) -> bool:
    from PIL import Image, ImageDraw

    from mova.export.verify import verify_export
    from mova.model.builder import load_pretrained

    model, processor = load_pretrained(folder)
    model.eval()
    with tempfile.TemporaryDirectory(prefix="mova-export-") as tmp:
        image = Image.new("RGB", (96, 80), (30, 120, 200))
        ImageDraw.Draw(image).ellipse((10, 10, 50, 50), fill=(255, 0, 0))
        path = Path(tmp) / "probe.png"
        image.save(path)
        prompt = processor.apply_chat_template([{"role": "user", "content": "<image>\nWhat is in the picture?"}])
        cases = {"text": {"prompt": processor.apply_chat_template([{"role": "user", "content": "Hello!"}]),
                          "images": []},
                 "image": {"prompt": prompt, "images": [str(path)]},
                 "pipeline": {"messages": [{"role": "user", "content": [
                     {"type": "image", "path": str(path)}, {"type": "text", "text": "\nWhat is in the picture?"}]}]}}
        report = verify_export(folder, model, processor, cases)
    for name, diff in report.max_abs_diff.items():
        print(f"verify {name}: max |logit difference| {diff:.3g}, token ids "
              f"{'equal' if report.ids_equal[name] else 'DIFFER'}, greedy tokens "
              f"{'equal' if report.generated_equal[name] else 'DIFFER'}")
    for name in sorted(set(report.generated_equal) - set(report.max_abs_diff)):
        print(f"verify {name}: pipeline('image-text-to-text') reply "
              f"{'equal' if report.generated_equal[name] else 'DIFFERS'}")
    print(f"verify: loaded as {report.model_class} without Mova")
    return report.ok()


def _run(args: argparse.Namespace) -> int:
    from mova.export.push import push_to_hub

    if args.push_only:
        if not args.push_to_hub:
            raise ConfigError("--push-only needs --push-to-hub REPO")
        result = push_to_hub(args.push_only, args.push_to_hub, private=args.private, revision=args.revision)
        print(f"uploaded {args.push_only} to {result.url}")
        return 0
    if not args.checkpoint or not args.out:
        raise ConfigError("mova export needs a CHECKPOINT folder and --out DIR (or --push-only DIR)")
    from mova.export.export import ExportOptions, export_model

    result = export_model(ExportOptions(
        checkpoint=args.checkpoint, out_dir=args.out, merge_lora=args.merge_lora, lora_alpha=args.lora_alpha,
        dtype=args.dtype, max_shard_size=args.max_shard_size, eval_dirs=list(args.eval_dir),
        run_dirs=list(args.run_dir), model_name=args.name or args.push_to_hub, license=args.license,
        overwrite=args.overwrite))
    print(f"exported {args.checkpoint} to {result.folder}: {len(result.files)} files"
          + (f"; LoRA merged (rank {result.lora['rank']})" if result.lora else ""))
    print("the model code needs: " + ", ".join(result.requirements.values()))
    if args.verify and not _verify(result.folder):
        print("verify: the standalone load differs from Mova's model")
        return 1
    if args.push_to_hub:
        pushed = push_to_hub(result.folder, args.push_to_hub, private=args.private, revision=args.revision)
        print(f"uploaded to {pushed.url}")
    return 0


COMMAND = Command("export", "write a Hugging Face release folder (remote code, card), optionally upload it",
                  _args, _run)
