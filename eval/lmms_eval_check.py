"""Evaluate a Mova checkpoint with lmms-eval's own POPE task code on a local POPE copy (nothing downloaded but
lmms-eval itself).

    python eval/lmms_eval_check.py                              # a tiny random checkpoint
    python eval/lmms_eval_check.py --checkpoint runs/sft/final --pope pope.parquet

lmms-eval 0.7.3 pins wandb 0.25 (protobuf < 7), which conflicts with Mova's protobuf pin, so it is not a Mova
dependency: the first run creates ``--venv`` (default ``.venv-lmms-eval``) that sees this environment's
packages and adds lmms-eval with ``pip install --no-deps`` plus the few small libraries its import needs, then
re-runs itself there. The POPE copy is the Hub release's parquet layout (``question_id``, ``question``,
``answer``, ``image``, ``category``); by default a 4-question one is generated. lmms-eval's ``pope`` task is
included with only its data source replaced, so its prompt, answer parsing and metrics are lmms-eval's; the
answers lmms-eval recorded are then compared with Mova's own ``generate_answers`` on the same questions and
images (exit status 1 when they differ, e.g. when the images did not reach the model).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

LMMS_EVAL = "lmms-eval==0.7.3"
#: what lmms-eval 0.7.3 needs beyond Mova's environment to import and run (filelock: it patches 3.x internals).
IMPORT_DEPS = ("pytz", "loguru", "evaluate", "tenacity", "aiohttp", "multidict", "yarl", "propcache",
               "aiohappyeyeballs", "aiosignal", "frozenlist", "attrs", "filelock<4")
ROOT = Path(__file__).resolve().parents[1]


def ensure_lmms_eval(venv: Path) -> None:
    """Re-run this script in ``venv`` (created on first use) unless lmms-eval imports here."""
    try:
        import lmms_eval.evaluator  # noqa: F401
        return
    except ImportError:
        if os.environ.get("MOVA_LMMS_EVAL_VENV"):  # already re-run in the venv: say what is missing, do not loop
            raise
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              check=True, capture_output=True, text=True).stdout.strip()
        ours = [p for p in sys.path if p.endswith("site-packages")]
        (Path(site) / "mova_env.pth").write_text("\n".join(ours) + "\n")
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", LMMS_EVAL, *IMPORT_DEPS],
                       check=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MOVA_LMMS_EVAL_VENV": str(venv)}
    raise SystemExit(subprocess.run([str(python), *sys.argv], env=env).returncode)


def tiny_checkpoint(folder: Path) -> Path:
    import torch

    from mova.config import ModelConfig, from_dict
    from mova.model.builder import build_model
    from mova.presets import preset_dict

    data = preset_dict("tiny")
    data["experts"] = [e for e in data["experts"] if e["family"] in ("sam", "layoutlmv3")]
    torch.manual_seed(0)
    model, processor = build_model(from_dict(ModelConfig, data, "model"), load_weights=False)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def pope_parquet(path: Path) -> Path:
    """A 4-question POPE copy in the Hub layout (image as a ``datasets`` Image feature)."""
    from datasets import Dataset, Features, Image, Value
    from PIL import Image as PILImage

    images = [PILImage.new("RGB", (32, 32), c) for c in ((200, 30, 30), (30, 30, 200))]
    rows = {"id": ["0", "1", "2", "3"], "question_id": ["1", "2", "3", "4"],
            "question": [f"Is there a {o} in the image?" for o in ("dog", "cup", "cat", "car")],
            "answer": ["yes", "no", "yes", "no"], "image_source": ["synthetic"] * 4,
            "image": [images[0], images[0], images[1], images[1]], "category": ["random"] * 4}
    features = Features({k: Value("string") for k in rows if k != "image"} | {"image": Image()})
    Dataset.from_dict(rows, features=features).to_parquet(str(path))
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help="a Mova checkpoint folder (default: a tiny random one)")
    p.add_argument("--pope", help="a POPE parquet in the Hub layout (default: a generated 4-question copy)")
    p.add_argument("--venv", default=str(ROOT / ".venv-lmms-eval"))
    p.add_argument("--limit", type=int, default=None)
    args = p.parse_args()
    ensure_lmms_eval(Path(args.venv))

    import lmms_eval.tasks
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    from mova.evaluation.lmms_eval_adapter import register_lmms_eval_model

    with tempfile.TemporaryDirectory(prefix="mova-lmms-eval-") as tmp:
        tmp_path = Path(tmp)
        checkpoint = args.checkpoint or str(tiny_checkpoint(tmp_path / "ckpt"))
        data = Path(args.pope) if args.pope else pope_parquet(tmp_path / "pope.parquet")
        tasks = tmp_path / "tasks"
        tasks.mkdir()
        pope_yaml = Path(lmms_eval.tasks.__file__).parent / "pope" / "pope.yaml"
        (tasks / "pope_local.yaml").write_text(
            f"include: {pope_yaml}\ntask: pope_local\ndataset_path: parquet\n"
            f"dataset_kwargs:\n  data_files:\n    test: {data.resolve()}\n")
        model_class = register_lmms_eval_model()
        results = simple_evaluate(model=model_class(pretrained=checkpoint), tasks=["pope_local"], limit=args.limit,
                                  log_samples=True, task_manager=TaskManager(include_path=str(tasks)), batch_size=1)
        same = _same_as_mova(checkpoint, results["samples"]["pope_local"], data)
    metrics = {k: v for k, v in results["results"]["pope_local"].items() if isinstance(v, (int, float))}
    print(json.dumps(metrics, indent=2, sort_keys=True))
    print(f"lmms-eval's answers equal Mova's own generate_answers on the same questions and images: {same}")
    return 0 if same else 1


def _same_as_mova(checkpoint: str, samples: list[dict], data: Path) -> bool:
    """Whether the answers lmms-eval recorded are what Mova generates itself for each question with its image
    (so the images reached the model through the adapter)."""
    from datasets import load_dataset

    from mova.inference.generation import generate_answers, load_model
    from mova.inference.sampling import SamplingParams

    model, processor = load_model(checkpoint)  # lmms-eval frees its model when it is done
    docs = load_dataset("parquet", data_files={"test": str(data)})["test"]
    for sample in samples:
        doc = docs[int(sample["doc_id"])]
        prompt = sample["arguments"][0][0] if isinstance(sample["arguments"][0], (list, tuple)) else None
        prompt = prompt or f"{doc['question'].strip()}\nAnswer the question using a single word or phrase."
        ours = generate_answers(model, processor, [[{"role": "user", "content": prompt}]],
                                [[doc["image"].convert("RGB")]], SamplingParams(max_new_tokens=128), progress=False)
        theirs = sample["resps"][0][0] if isinstance(sample["resps"][0], list) else sample["resps"][0]
        if ours[0] != theirs:
            print(f"doc {sample['doc_id']}: lmms-eval got {theirs!r}, Mova gives {ours[0]!r}")
            return False
    return bool(samples)


if __name__ == "__main__":
    sys.exit(main())
