"""Readers for standard VLM benchmarks in the formats they are published in (local copies; nothing is downloaded).

=============== ======================================================================================
benchmark       files read
=============== ======================================================================================
VQAv2           ``v2_OpenEnded_mscoco_*_questions.json`` (``{"questions": [...]}``) and, for scoring,
                ``v2_mscoco_*_annotations.json`` (``{"annotations": [...]}``); COCO images named
                ``COCO_<split>_<image_id:012d>.jpg`` (the split from the question file's ``data_subtype``)
TextVQA         ``TextVQA_0.5.1_<split>.json`` (``{"data": [...]}``, 10 ``answers`` each); images
                ``<image_id>.jpg``
POPE            the POPE repository's question files (JSON lines ``{"question_id", "image", "text",
                "label"}``), or the Hub parquet (``question``, ``answer``, ``image``, ``category``)
MME             the Hub parquet / JSON lines (``question_id`` = ``<category>/<image file>``, ``question``,
                ``answer`` Yes/No, ``category``, ``image``)
MMBench         the release TSV (``index``, ``question``, ``hint``, ``A``..``D``, ``answer``, ``category``,
                ``image`` as base64)
MM-SafetyBench  ``processed_questions/<scenario>.json`` (``{"0": {"Question", "Rephrased Question",
                "Rephrased Question(SD)", "Key Phrase"}, ...}``) and ``imgs/<scenario>/<SD|TYPO|SD_TYPO>/
                <id>.jpg``
=============== ======================================================================================

Images come as a path relative to an image folder, as the Hub's ``{"bytes", "path"}`` struct, or as base64.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

from PIL import Image

from mova.data.records import resolve_image_path
from mova.errors import DataError


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a ``.parquet``, ``.tsv``, ``.jsonl`` or ``.json`` (a list) file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".tsv":
        csv.field_size_limit(sys.maxsize)  # base64 images are long fields
        return list(csv.DictReader(io.StringIO(text), delimiter="\t"))
    try:
        if path.suffix == ".jsonl" or (path.suffix == ".json" and not text.lstrip().startswith(("[", "{"))):
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        data = json.loads(text)
    except ValueError:
        try:  # POPE's ".json" files are JSON lines
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        except ValueError as e:
            raise DataError(f"{path}: neither JSON nor JSON lines: {e}") from e
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list of records")
    return data


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise DataError(f"{path}: not valid JSON: {e}") from e


def decode_image(value: Any, root: Path | None = None, *, base64_text: bool = False) -> Image.Image | Path:
    """A Hub image struct or base64 text as a PIL image, or a path under ``root``."""
    if isinstance(value, dict) and value.get("bytes"):
        return Image.open(io.BytesIO(value["bytes"])).convert("RGB")
    if isinstance(value, dict) and value.get("path"):
        value = value["path"]
    if isinstance(value, (bytes, bytearray)):
        return Image.open(io.BytesIO(value)).convert("RGB")
    if base64_text:
        try:
            return Image.open(io.BytesIO(base64.b64decode(value))).convert("RGB")
        except (ValueError, OSError) as e:
            raise DataError(f"cannot decode a base64 image: {e}") from e
    if not isinstance(value, str) or not value:
        raise DataError(f"no image in {str(value)[:80]!r}")
    return resolve_image_path(root, value)


def vqav2_items(questions: str | Path, annotations: str | Path | None, image_root: Path) -> list[dict[str, Any]]:
    """VQAv2 questions joined with their annotations: ``question_id``, ``question``, ``image``, ``answers``,
    ``answer_type``, ``question_type``."""
    qdata = read_json(questions)
    subtype = qdata.get("data_subtype", "val2014")
    gold = {}
    if annotations is not None:
        gold = {a["question_id"]: a for a in read_json(annotations)["annotations"]}
    items = []
    for q in qdata["questions"]:
        a = gold.get(q["question_id"], {})
        items.append({"question_id": q["question_id"], "question": q["question"],
                      "image": resolve_image_path(image_root, f"COCO_{subtype}_{int(q['image_id']):012d}.jpg"),
                      "answers": [x["answer"] for x in a.get("answers", [])],
                      "answer_type": a.get("answer_type", "all"), "question_type": a.get("question_type", "all")})
    return items


def textvqa_items(path: str | Path, image_root: Path) -> list[dict[str, Any]]:
    return [{"question_id": d["question_id"], "question": d["question"],
             "image": resolve_image_path(image_root, f"{d['image_id']}.jpg"), "answers": list(d.get("answers", []))}
            for d in read_json(path)["data"]]


def mmsafety_items(root: Path, image_kind: str = "SD_TYPO") -> list[dict[str, Any]]:
    """MM-SafetyBench questions: per scenario file, the question matching ``image_kind`` with its image
    (``Rephrased Question`` for TYPO and SD_TYPO images, ``Rephrased Question(SD)`` for SD, ``Question``
    with no image for ``text``)."""
    key = {"SD_TYPO": "Rephrased Question", "TYPO": "Rephrased Question", "SD": "Rephrased Question(SD)",
           "text": "Question"}
    if image_kind not in key:
        raise DataError(f"mmsafetybench image_kind must be one of {sorted(key)}, got {image_kind!r}")
    files = sorted((root / "processed_questions").glob("*.json"))
    if not files:
        raise DataError(f"{root}/processed_questions holds no scenario .json files")
    items = []
    for f in files:
        for qid, q in read_json(f).items():
            image = None if image_kind == "text" else resolve_image_path(root / "imgs" / f.stem / image_kind,
                                                                         f"{qid}.jpg")
            items.append({"scenario": f.stem, "question_id": f"{f.stem}/{qid}", "question": q[key[image_kind]],
                          "image": image})
    return items
