"""Check an exported folder the way a user without Mova meets it: in a fresh Python process where
``import mova`` fails, load it with ``AutoModelForCausalLM`` / ``AutoProcessor(trust_remote_code=True)``,
process the same prompts and images, and compare token ids, logits and a few greedy tokens with Mova's
own model.

The process runs from a temporary directory with ``PYTHONPATH`` removed and a meta-path finder that
refuses every ``mova`` module, so an installed (even editable) Mova cannot leak in; transformers copies the
folder's code into a temporary modules cache, not the user's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mova.errors import MovaError

#: run as ``python -c STANDALONE FOLDER CASES_JSON OUT_SAFETENSORS``.
STANDALONE = r'''
import importlib.abc, json, sys

class NoMova(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "mova" or name.startswith("mova."):
            raise ImportError(f"{name}: Mova is blocked in this process (checking a standalone export)")
        return None

sys.meta_path.insert(0, NoMova())
import builtins

def no_prompt(*args, **kwargs):
    # transformers asks "Do you wish to run the custom code?" on a terminal when a loader lost trust_remote_code.
    raise RuntimeError("a loader asked on the terminal (trust_remote_code was not passed on): " + str(args)[:200])

builtins.input = no_prompt
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoProcessor, pipeline

folder, cases_path, out_path = sys.argv[1:4]
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
out = {}
answers = {}
cases = json.loads(open(cases_path).read())
if any(case.get("messages") for case in cases.values()):
    pipe = pipeline("image-text-to-text", model=folder, trust_remote_code=True)
for name, case in cases.items():
    if case.get("messages"):
        reply = pipe(text=case["messages"], max_new_tokens=4, do_sample=False)
        answers[name] = reply[0]["generated_text"][-1]["content"]
        continue
    inputs = processor(case["prompt"], images=case["images"] or None)
    with torch.no_grad():
        logits = model(**inputs).logits
        generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    out[name + ".logits"] = logits.float().contiguous()
    out[name + ".generated"] = generated.contiguous()
    out[name + ".input_ids"] = inputs["input_ids"].contiguous()
save_file(out, out_path)
open(out_path + ".json", "w").write(json.dumps({"model_class": type(model).__module__ + "." + type(model).__name__,
                  "processor_class": type(processor).__module__ + "." + type(processor).__name__,
                  "mova_modules": sorted(m for m in sys.modules if m == "mova" or m.startswith("mova.")),
                  "answers": answers}))
'''


class VerifyError(MovaError, RuntimeError):
    """The exported folder did not load, or its outputs differ from Mova's."""


@dataclass
class VerifyReport:
    #: case -> max |logit difference| between the standalone load and Mova's model.
    max_abs_diff: dict[str, float]
    ids_equal: dict[str, bool]
    #: case -> whether 4 greedy tokens from ``generate()`` are the same.
    generated_equal: dict[str, bool]
    model_class: str
    processor_class: str

    def ok(self, atol: float = 1e-5) -> bool:
        return (all(self.ids_equal.values()) and all(self.generated_equal.values())
                and all(d <= atol for d in self.max_abs_diff.values()))


def run_standalone(folder: str | Path, cases: dict[str, dict[str, Any]], timeout: float = 300) -> tuple[
        dict[str, torch.Tensor], dict[str, Any]]:
    """Outputs of ``cases`` (name -> ``{"prompt", "images": [paths]}``) from the folder loaded without Mova."""
    from safetensors.torch import load_file

    folder = Path(folder).resolve()
    with tempfile.TemporaryDirectory(prefix="mova-verify-") as tmp:
        tmp_path = Path(tmp)
        cases_path, out_path = tmp_path / "cases.json", tmp_path / "out.safetensors"
        resolved = {n: {"prompt": c.get("prompt"), "images": [str(Path(p).resolve()) for p in c.get("images", [])],
                        "messages": _resolve_paths(c.get("messages"))} for n, c in cases.items()}
        cases_path.write_text(json.dumps(resolved))
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
        env.update(HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        proc = subprocess.run([sys.executable, "-c", STANDALONE, str(folder), str(cases_path), str(out_path)],
                              cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise VerifyError(f"{folder} did not load without Mova:\n{proc.stderr[-3000:]}")
        info = json.loads(Path(f"{out_path}.json").read_text())
        return load_file(str(out_path)), info


def _resolve_paths(messages: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """``messages`` with their image parts' paths made absolute (the standalone process runs elsewhere)."""
    if not messages:
        return None
    out = []
    for m in messages:
        content = m["content"]
        if isinstance(content, list):
            content = [{**part, "path": str(Path(part["path"]).resolve())} if part.get("path") else part
                       for part in content]
        out.append({**m, "content": content})
    return out


def pipeline_answer(model: Any, processor: Any, messages: list[dict[str, Any]], max_new_tokens: int = 4) -> str:
    """The reply of ``pipeline("image-text-to-text")`` to a chat (greedy), as a user of the folder runs it."""
    from transformers import pipeline

    pipe = pipeline("image-text-to-text", model=model, processor=processor)
    return pipe(text=_resolve_paths(messages), max_new_tokens=max_new_tokens,
                do_sample=False)[0]["generated_text"][-1]["content"]


def verify_export(folder: str | Path, model: Any, processor: Any, cases: dict[str, dict[str, Any]],
                  timeout: float = 300) -> VerifyReport:
    """Compare Mova's ``model`` / ``processor`` with the standalone load of ``folder`` on ``cases``.

    A case is ``{"prompt", "images"}`` (ids, logits and 4 greedy tokens compared) or ``{"messages"}``, a chat
    with image parts answered by ``pipeline("image-text-to-text")`` on both sides (the replies compared).
    """
    outputs, info = run_standalone(folder, cases, timeout)
    if info["mova_modules"]:
        raise VerifyError(f"the standalone process imported {info['mova_modules']}")
    diffs, ids_equal, generated_equal = {}, {}, {}
    for name, case in cases.items():
        if case.get("messages"):
            generated_equal[name] = pipeline_answer(model, processor, case["messages"]) == info["answers"][name]
            continue
        inputs = processor(case["prompt"], images=[str(p) for p in case.get("images", [])] or None)
        with torch.no_grad():
            logits = model(**inputs).logits.float()
            generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        theirs = outputs[f"{name}.logits"]
        ids_equal[name] = torch.equal(inputs["input_ids"], outputs[f"{name}.input_ids"])
        generated_equal[name] = torch.equal(generated, outputs[f"{name}.generated"])
        diffs[name] = float((logits - theirs).abs().max()) if logits.shape == theirs.shape else float("inf")
    return VerifyReport(diffs, ids_equal, generated_equal, info["model_class"], info["processor_class"])


def load_remote(folder: str | Path) -> tuple[Any, Any]:
    """``(model, processor)`` built from the folder's own code (its ``auto_map``), in this process.

    ``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`` would pick Mova's registered
    classes when Mova is imported; this goes through transformers' dynamic-module loader explicitly, so
    what runs is the bundled code a user without Mova gets.
    """
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    folder = str(Path(folder).resolve())
    auto = json.loads((Path(folder) / "config.json").read_text()).get("auto_map") or {}
    if "AutoModelForCausalLM" not in auto or "AutoProcessor" not in auto:
        raise VerifyError(f"{folder}/config.json has no auto_map for the model and processor; export it with "
                          "mova export")
    model_class = get_class_from_dynamic_module(auto["AutoModelForCausalLM"], folder)
    processor_class = get_class_from_dynamic_module(auto["AutoProcessor"], folder)
    return model_class.from_pretrained(folder).eval(), processor_class.from_pretrained(folder)
