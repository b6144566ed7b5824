"""The GSM8K evaluation: prompts, scoring of CoT and program answers, the bundled few-shot file, and an
end-to-end run of ``mova eval gsm8k`` and the ``gsm8k`` suite task on a tiny random model."""

from __future__ import annotations

import json
import re

import pytest

from mova.data.arith_mini import write_arith_mini
from mova.data.reasoning import load_reasoning, parse_rows
from mova.evaluation.gsm8k import (
    DEFAULT_FEWSHOT,
    Gsm8kConfig,
    build_prompt,
    evaluate_gsm8k,
    load_fewshot,
    score_cot,
    score_programs,
)
from mova.rl.curriculum import split_program, start_states
from mova.rl.sandbox import SandboxConfig

RECORDS = parse_rows([
    {"id": "a", "question": "q1", "answer": "2 + 3 = 5\n#### 5"},
    {"id": "b", "question": "q2", "answer": "10 * 10 = 100\n#### 1,000"},
    {"id": "c", "question": "q3", "answer": "x\n#### 7"},
    {"id": "d", "question": "q4", "answer": "y\n#### 12"},
])

ARITH = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a / b}


def test_score_cot_against_hand_scored_outputs():
    outputs = [
        "2 + 3 = 5\n#### 5",  # right, every rule agrees
        "so 1000 in all.\n#### 1,000.",  # right; strict keeps "1,000." which the harness normalises to 1000
        "The answer is 7.",  # right by the answer_is fallback; no '####' so strict is invalid
        "#### 12.0",  # numerically right; the harness' string match is not ("12.0" != "12": it removes only
        # commas, '$' and a trailing '.')
    ]
    samples, metrics = score_cot(RECORDS, outputs)
    assert [s.correct for s in samples] == [True, True, True, True]
    assert [s.extra["strict_match"] for s in samples] == [True, True, False, False]
    assert [s.extra["flexible_match"] for s in samples] == [True, True, True, False]
    assert metrics["accuracy"] == 1.0 and metrics["strict_match"] == 0.5 and metrics["flexible_match"] == 0.75
    wrong, m2 = score_cot(RECORDS, ["#### 6", "no idea", "#### 8", "The answer is 13"])
    assert [s.extracted for s in wrong] == ["6", None, "8", "13"]
    assert m2["accuracy"] == 0.0 and m2["well_formed"] == 0.75


def test_zero_shot_prompt_is_the_r3_start_state():
    record = RECORDS[0]
    assert build_prompt(record, [], "cot") == start_states(record, "cot")[0].prompt
    prog = parse_rows([{"question": "q", "program": "def solution():\n    a = 1\n    return a", "answer": 1}])[0]
    assert build_prompt(prog, [], "program") == start_states(prog, "program")[0].prompt


def test_fewshot_prompt_layout():
    shots = load_fewshot("default", 3, "cot")
    prompt = build_prompt(RECORDS[0], shots, "cot")
    blocks = prompt.split("\n\n")
    assert len(blocks) == 4 and blocks[-1] == "Question: q1\nAnswer:\n"
    for block, shot in zip(blocks, shots):
        assert block == f"Question: {shot.question}\nAnswer:\n{shot.gsm8k_answer()}"
    program_prompt = build_prompt(RECORDS[0], load_fewshot("default", 2, "program"), "program")
    assert program_prompt.endswith("Question: q1\ndef solution():\n") and program_prompt.count("def solution") == 3
    assert load_fewshot("none", 8, "cot") == [] and load_fewshot("default", 0, "cot") == []


def test_bundled_fewshot_examples_are_right():
    shots = load_reasoning(DEFAULT_FEWSHOT)
    assert len(shots) == 8
    for shot in shots:  # every "a op b = c" in a rationale is true arithmetic
        for a, op, b, c in re.findall(r"([\d.]+) ([+\-*/]) ([\d.]+) = ([\d.]+)", shot.rationale):
            assert ARITH[op](float(a), float(b)) == pytest.approx(float(c)), shot.id
    bodies = ["".join(line + "\n" for line in split_program(s.program)[1]) for s in shots]
    _, cot = score_cot(shots, [s.gsm8k_answer() for s in shots])
    _, prog = score_programs(shots, bodies, SandboxConfig(timeout_s=5))
    assert cot["accuracy"] == 1.0 and prog["accuracy"] == 1.0


def test_program_scoring_in_the_sandbox():
    outputs = ["return 2 + 3\n", "    return 999\nQuestion: next", "    while True:\n        pass\n",
               "    import os\n    os.system('true')\n    return 12"]
    samples, metrics = score_programs(RECORDS, outputs, SandboxConfig(timeout_s=1.5, cpu_seconds=1))
    assert [s.correct for s in samples] == [True, False, False, False]
    errors = [s.extra["error"] for s in samples]
    assert errors[:2] == [None, None] and errors[2] in ("timeout", "cpu") and errors[3] == "violation"
    assert metrics["timeouts"] == 0.25 and metrics["well_formed"] == 0.5


def test_evaluate_writes_one_row_per_sample(tmp_path):
    def fake_generate(prompts, max_new_tokens, stop):
        assert stop == ["Question:"] and all(p.endswith("Answer:\n") for p in prompts)
        return ["#### 5", "#### 3", "", "#### 12"]

    metrics = evaluate_gsm8k(fake_generate, RECORDS, Gsm8kConfig(shots=2), tmp_path / "s.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", "b", "c", "d"]
    assert [r["correct"] for r in rows] == [True, False, False, True]
    assert metrics["accuracy"] == 0.5


def test_mova_eval_gsm8k_and_the_suite_task_on_a_tiny_model(tmp_path):
    from conftest import save_tiny_text_lm

    from mova.cli import main
    from mova.evaluation.tasks import TaskContext, get_task
    from mova.inference.generation import load_model

    model_dir = tmp_path / "model"
    save_tiny_text_lm(model_dir)
    data = write_arith_mini(tmp_path / "arith", n_train=4, n_test=3, seed=0)
    out = tmp_path / "eval"
    code = main(["eval", "gsm8k", "--model", str(model_dir), "--data", str(data), "--shots", "1",
                 "--max-new-tokens", "6", "--batch-size", "2", "--out-dir", str(out), "--no-progress"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and 0.0 <= results["metrics"]["accuracy"] <= 1.0
    assert results["metrics"]["accuracy"] == sum(r["correct"] for r in rows) / 3

    model, tok = load_model(model_dir, device="cpu")
    ctx = TaskContext(model=model, processor=tok, model_path=str(model_dir), out_dir=tmp_path / "task",
                      batch_size=3, max_new_tokens=6, progress=False, task="gsm8k",
                      options={"data": str(data), "kind": "program", "shots": 1})
    (tmp_path / "task").mkdir()
    metrics = get_task("gsm8k")(ctx)
    assert metrics["num_samples"] == 3.0 and len((tmp_path / "task" / "gsm8k.jsonl").read_text().splitlines()) == 3
