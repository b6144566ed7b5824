"""The evaluation suite: VQA normalisation and accuracy against an independent computation, LLaVA question
and answer formats, multiple-choice scoring, ``mova eval run`` on two tiny checkpoints (vqa + safety) with
its summary / comparison files, ``mova eval compare``, and a 2-process ``torchrun`` run that must give the
single-process results."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest
import torch

from mova.cli import main as cli_main
from mova.errors import ConfigError, DataError
from mova.evaluation.suite import SuiteConfig, compare_runs, parse_task_options, run_suite
from mova.evaluation.tasks import load_tasks
from mova.evaluation.vqa_task import (
    VqaQuestion,
    load_vqa_questions,
    normalize_vqa_answer,
    score_question,
    vqa_accuracy,
)
from mova.inference import generate_answers, generate_from_prompts, load_model
from mova.model.builder import build_model
from tests.conftest import random_image, save_tiny_text_lm, tiny_model_config, torchrun

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("raw", "norm"), [
    ("Two", "2"), ("the Dog.", "dog"), ("1,000", "1000"), ("3.5", "3.5"), ("Yes!", "yes"),
    ("black-and-white", "black and white"), ("dont", "don't"), ("An apple, maybe?", "apple maybe"),
    ("  A   red\tcar \n", "red car"), ("none", "0"),
])
def test_normalize_vqa_answer(raw, norm):
    assert normalize_vqa_answer(raw) == norm


def reference_vqa_accuracy(pred: str, answers: list[str]) -> float:
    """The VQA metric as its definition reads: average over every choice of len-1 human answers of
    min(1, matches / 3) (``itertools.combinations``, not the leave-one-out loop)."""
    if len(answers) == 1:
        return float(normalize_vqa_answer(pred) == normalize_vqa_answer(answers[0]))
    subsets = list(itertools.combinations(answers, len(answers) - 1))
    p = normalize_vqa_answer(pred)
    return sum(min(1.0, sum(normalize_vqa_answer(a) == p for a in s) / 3) for s in subsets) / len(subsets)


def test_vqa_accuracy_matches_the_definition_on_random_answer_sets():
    rng = random.Random(0)
    vocab = ["yes", "Yes.", "no", "2", "two", "red", "the red", "blue"]
    for _ in range(200):
        answers = [rng.choice(vocab) for _ in range(rng.choice([1, 3, 10]))]
        pred = rng.choice(vocab)
        assert vqa_accuracy(pred, answers) == pytest.approx(reference_vqa_accuracy(pred, answers))
    assert vqa_accuracy("yes", ["yes"] * 3 + ["no"] * 7) == pytest.approx(0.9)  # 7 subsets keep 3, 3 keep 2
    assert vqa_accuracy("Two", ["2"] * 10) == 1.0 and vqa_accuracy("x", []) == 0.0


def test_choice_and_exact_scoring():
    q = VqaQuestion("1", "Which shape?", None, ["B"], ["circle", "square", "star"])
    assert score_question(q, "B") == (1.0, "choice")
    assert score_question(q, "The answer is (A).") == (0.0, "choice")
    assert score_question(VqaQuestion("2", "Colour?", None, ["red"]), "Red.") == (1.0, "exact")
    assert score_question(VqaQuestion("3", "How many?", None, ["three"]), "3 shapes") == (1.0, "exact")
    assert score_question(VqaQuestion("4", "Q?", None, []), "x") == (None, "exact")
    with pytest.raises(ConfigError, match="metric"):
        score_question(VqaQuestion("5", "Q?", None, ["a"]), "a", "bleu")


def test_question_formats(tmp_path):
    qfile = tmp_path / "q.jsonl"
    qfile.write_text("\n".join(json.dumps(r) for r in [
        {"question_id": 7, "image": "a.png", "text": "What colour?", "category": "colour"},
        {"question_id": 8, "image": "b.png", "text": "Pick one", "options": ["x", "y"], "answer": "A"},
    ]))
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps([{"question_id": 7, "answers": [{"answer": "red"}] * 10}]))
    q7, q8 = load_vqa_questions(qfile, ann)
    assert q7.answers == ["red"] * 10 and q7.category == "colour" and q8.options == ["x", "y"]
    conv = tmp_path / "test.json"
    conv.write_text(json.dumps([{"id": "s1", "image": "i.png", "type": "shape", "conversations": [
        {"from": "human", "value": "<image>\nWhat shape?"}, {"from": "gpt", "value": "circle"}]}]))
    (s1,) = load_vqa_questions(conv)
    assert (s1.question_id, s1.text, s1.answers, s1.category) == ("s1", "What shape?", ["circle"], "shape")
    qfile.write_text(json.dumps({"id": 1, "prompt": "no text"}) + "\n")
    with pytest.raises(DataError, match="record 0"):
        load_vqa_questions(qfile)


def test_task_options_and_config_errors():
    assert parse_task_options(["vqa.questions=a.jsonl", "vqa.max-new-tokens=4", "safety.splits=harm"]) == {
        "vqa": {"questions": "a.jsonl", "max_new_tokens": 4}, "safety": {"splits": "harm"}}
    with pytest.raises(ConfigError, match="TASK.KEY=VALUE"):
        parse_task_options(["questions=a"])
    assert {"vqa", "safety"} <= set(load_tasks())
    with pytest.raises(ConfigError, match="unknown evaluation task"):
        SuiteConfig(checkpoints=["x"], tasks=["nope"])
    with pytest.raises(ConfigError, match="not in --tasks"):
        SuiteConfig(checkpoints=["x"], tasks=["vqa"], task_options={"safety": {"judge": "keyword"}})


@pytest.fixture(scope="module")
def suite_data(tmp_path_factory):
    """Two saved tiny Mova checkpoints, five LLaVA questions with images, a mini SPA-VL folder."""
    from mova.data.spavl_mini import write_spavl_mini

    root = tmp_path_factory.mktemp("suite")
    for seed, name in ((0, "ours"), (1, "base")):
        torch.manual_seed(seed)
        model, processor = build_model(tiny_model_config(), load_weights=False)
        model.save_pretrained(root / name)
        processor.save_pretrained(root / name)
    images = root / "images"
    images.mkdir()
    records = []
    for i, (q, a) in enumerate([("What colour is the circle?", "red"), ("How many shapes?", "one"),
                                ("Is there a circle?", "yes"), ("Describe the picture in detail please.", "circle"),
                                ("Pick the shape", "A")]):
        random_image(i, (64 + 8 * i, 72)).save(images / f"{i}.png")
        rec = {"question_id": f"q{i}", "image": f"images/{i}.png", "text": q, "answer": a,
               "category": "mc" if i == 4 else "open"}
        if i == 4:
            rec["options"] = ["circle", "square"]
        records.append(rec)
    (root / "questions.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    write_spavl_mini(root / "spavl", n_train=1, n_validation=1, n_test_per_split=2, seed=0)
    return root


def test_mova_eval_run_two_checkpoints_then_compare(suite_data, tmp_path, capsys):
    out = tmp_path / "eval"
    args = ["eval", "run", "--checkpoint", str(suite_data / "ours"), "--checkpoint", str(suite_data / "base"),
            "--tasks", "vqa,safety", "--task-option", f"vqa.questions={suite_data / 'questions.jsonl'}",
            "--task-option", "vqa.max_new_tokens=4", "--task-option", f"safety.data={suite_data / 'spavl'}",
            "--task-option", "safety.splits=harm", "--max-new-tokens", "4", "--batch-size", "3",
            "--seed", "5", "--out-dir", str(out), "--no-progress", "--device", "cpu"]
    assert cli_main(args) == 0
    summary = json.loads((out / "ours" / "summary.json").read_text())
    assert summary["config"]["seed"] == 5 and summary["config"]["tasks"] == ["vqa", "safety"]
    assert summary["config"]["task_options"]["vqa"]["max_new_tokens"] == 4
    prov = summary["provenance"]
    assert prov["seed"] == 5 and prov["versions"]["transformers"] and prov["checkpoint"]["fingerprint"]
    ours_fp = prov["checkpoint"]["fingerprint"]
    assert json.loads((out / "base" / "summary.json").read_text())["provenance"]["checkpoint"]["fingerprint"] != ours_fp

    # the task's answers are what batched generation gives for these questions, in LLaVA's answer format
    samples = [json.loads(line) for line in (out / "ours" / "vqa" / "samples.jsonl").read_text().splitlines()]
    answers = [json.loads(line) for line in (out / "ours" / "vqa" / "answers.jsonl").read_text().splitlines()]
    assert [a["question_id"] for a in answers] == [f"q{i}" for i in range(5)]
    assert set(answers[0]) == {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}
    model, processor = load_model(suite_data / "ours", device="cpu")
    expected = generate_answers(model, processor, [[{"role": "user", "content": a["prompt"]}] for a in answers],
                                [suite_data / "images" / f"{i}.png" for i in range(5)], batch_size=1,
                                max_new_tokens=4, progress=False)
    assert [a["text"] for a in answers] == expected
    assert "A. circle\nB. square" in answers[4]["prompt"] and samples[4]["metric"] == "choice"
    vqa = summary["tasks"]["vqa"]["metrics"]
    assert vqa["accuracy"] == pytest.approx(sum(s["score"] for s in samples) / 5)
    safety = json.loads((out / "ours" / "safety" / "results.json").read_text())
    assert summary["tasks"]["safety"]["metrics"]["harm/n"] == safety["harm"]["n"] == 2

    comparison = (out / "comparison.md").read_text()
    assert "| metric | ours | base |" in comparison and "| vqa/accuracy |" in comparison
    table, runs = compare_runs([out / "ours", out / "base"])
    assert list(runs) == ["ours", "base"] and table.splitlines()[:3] == comparison.splitlines()[:3]
    capsys.readouterr()
    assert cli_main(["eval", "compare", *map(str, sorted(out.glob("*")))]) == 0  # like `runs/eval/*`
    printed = capsys.readouterr().out
    assert "| metric | base | ours |" in printed and "| vqa/accuracy |" in printed


TORCHRUN_SCRIPT = """
import json, sys, torch
from mova.evaluation.suite import SuiteConfig, run_suite
from mova.inference import generate_from_prompts, load_model
from mova.inference.sharding import init_distributed, is_main_process
from transformers import LlamaForCausalLM
assert init_distributed("gloo")
lm, prompts, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
rows = []  # prompts this process generated for, over both parts
original_generate = LlamaForCausalLM.generate
def counting_generate(self, *args, **kwargs):
    rows.append(kwargs["input_ids"].shape[0])
    return original_generate(self, *args, **kwargs)
LlamaForCausalLM.generate = counting_generate
model, tok = load_model(lm, device="cpu")
gens = generate_from_prompts(model, tok, prompts, batch_size=2, max_new_tokens=6, return_step_logits=True,
                             progress=False, shard_across_processes=True)
if is_main_process():
    torch.save({"texts": [g.text for g in gens], "logits": [g.step_logits for g in gens]}, out + "/gen.pt")
run_suite(SuiteConfig(**json.loads(sys.argv[4])))
open(f"{out}/rows{torch.distributed.get_rank()}.json", "w").write(json.dumps(sum(rows)))
torch.distributed.destroy_process_group()
"""


def test_torchrun_two_processes_give_the_single_process_results(tmp_path):
    """Sharded generation (every step's logits) and a whole suite run under ``torchrun --nproc_per_node 2``
    (gloo, CPU) against the same calls in this one process."""
    save_tiny_text_lm(tmp_path / "lm")
    prompts = [f"USER: question {i} {'with more words ' * (i % 3)}ASSISTANT:" for i in range(7)]
    questions = tmp_path / "q.jsonl"
    questions.write_text("\n".join(json.dumps({"question_id": i, "text": f"question {i} " + "word " * (i % 4),
                                               "answer": "yes"}) for i in range(7)))
    config = {"checkpoints": [str(tmp_path / "lm")], "tasks": ["vqa"], "batch_size": 2, "progress": False,
              "device": "cpu", "task_options": {"vqa": {"questions": str(questions), "max_new_tokens": 5}}}
    script = tmp_path / "run.py"
    script.write_text(TORCHRUN_SCRIPT)
    torchrun(script, tmp_path / "lm", json.dumps(prompts), tmp_path,
             json.dumps({**config, "out_dir": str(tmp_path / "two")}), timeout=300)

    rows = [json.loads((tmp_path / f"rows{r}.json").read_text()) for r in (0, 1)]
    assert sum(rows) == 7 + 7 and max(rows) < 14, rows  # each process generated a share, not everything
    two = torch.load(tmp_path / "gen.pt", weights_only=True)
    model, tok = load_model(tmp_path / "lm", device="cpu")
    one = generate_from_prompts(model, tok, prompts, batch_size=2, max_new_tokens=6, return_step_logits=True,
                                progress=False)
    assert two["texts"] == [g.text for g in one]
    for a, b in zip(two["logits"], one):
        torch.testing.assert_close(a, b.step_logits, rtol=0, atol=1e-4)

    run_suite(SuiteConfig(**{**config, "out_dir": str(tmp_path / "one")}))
    for name in ("answers.jsonl", "samples.jsonl"):
        assert (tmp_path / "two/lm/vqa" / name).read_text() == (tmp_path / "one/lm/vqa" / name).read_text()
    two_summary = json.loads((tmp_path / "two/lm/summary.json").read_text())
    one_summary = json.loads((tmp_path / "one/lm/summary.json").read_text())
    assert two_summary["provenance"]["world_size"] == 2 and one_summary["provenance"]["world_size"] == 1
    assert two_summary["tasks"]["vqa"]["metrics"] == one_summary["tasks"]["vqa"]["metrics"]
    assert not list((tmp_path / "two").glob("**/*rank1*"))  # rank 1 wrote nowhere in the run folder
