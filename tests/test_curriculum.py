"""R3 start states, schedules, the reasoning readers and the bundled arithmetic set."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from mova.config import from_dict
from mova.data.arith_mini import MAX_VALUE, generate, write_arith_mini
from mova.data.reasoning import ReasoningRecord, load_reasoning, parse_rows
from mova.errors import ConfigError, DataError, UnknownNameError
from mova.rl.curriculum import (
    build_schedule,
    build_start_states,
    schedule_from_config,
    split_program,
    split_steps,
    start_states,
)
from mova.trainers.r3_config import CurriculumConfig

GSM8K_ROW = {"question": "Mia has 4 bags of 6 apples. She eats 5. How many are left?",
             "answer": "She has 4 * 6 = <<4*6=24>>24 apples.\nAfter eating, 24 - 5 = <<24-5=19>>19 remain.\n#### 19"}
PROGRAM_ROW = {"question": "A box holds 3 rows of 7 eggs. How many eggs?",
               "program": 'def solution():\n    """A box holds 3 rows of 7 eggs."""\n    rows = 3\n\n'
                          '    per_row = 7\n    return rows * per_row\n', "answer": 21}


def _records(n=12, seed=0):
    return parse_rows(generate(n, 0, seed)["train"])


# --- start states --------------------------------------------------------------------------------------
def test_cot_start_states_prefix_the_gold_steps():
    record = parse_rows([GSM8K_ROW])[0]
    states = start_states(record, "cot")
    assert record.answer == "19"
    gold_lines = ["She has 4 * 6 = 24 apples.", "After eating, 24 - 5 = 19 remain.", "#### 19"]
    assert [s.k for s in states] == [0, 1, 2] and all(s.num_steps == 3 for s in states)
    for k, s in enumerate(states):
        assert s.prompt == "Question: " + GSM8K_ROW["question"] + "\nAnswer:\n" + "".join(
            line + "\n" for line in gold_lines[:k])
        assert s.gold_remaining == "".join(line + "\n" for line in gold_lines[k:])
        assert s.answer == "19" and s.columns() == {"answer": "19", "k": k}


def test_program_start_states_keep_header_and_indentation():
    record = parse_rows([PROGRAM_ROW])[0]
    header, body = split_program(record.program)
    assert header == 'def solution():\n    """A box holds 3 rows of 7 eggs."""\n'
    assert body == ["    rows = 3", "    per_row = 7", "    return rows * per_row"]
    states = start_states(record, "program")
    assert len(states) == 3
    assert states[0].prompt.endswith('"""A box holds 3 rows of 7 eggs."""\n')
    assert states[2].prompt.endswith("    per_row = 7\n") and states[2].gold_remaining == "    return rows * per_row\n"


@pytest.mark.parametrize("kind", ["cot", "program"])
def test_every_start_state_completes_to_the_same_demonstration(kind):
    for record in _records(30):
        states = start_states(record, kind)
        full = states[0].prompt + states[0].gold_remaining
        assert len({s.prompt + s.gold_remaining for s in states}) == 1
        assert all(states[k].prompt.startswith(states[k - 1].prompt) for k in range(1, len(states)))
        assert len(states) == len(split_steps(record.program if kind == "program" else record.gsm8k_answer(), kind))
        assert full.count("\n") >= len(states)


def test_callable_prompt_and_bad_records():
    record = parse_rows([GSM8K_ROW])[0]
    states = start_states(record, "cot", prompt=lambda q: f"USER: {q}\nASSISTANT: ")
    assert states[1].prompt.startswith("USER: Mia") and "\nASSISTANT: She has" in states[1].prompt
    with pytest.raises(DataError, match="no program"):
        start_states(record, "program")
    with pytest.raises(ConfigError, match="unknown CoT kind"):
        start_states(record, "latex")
    with pytest.raises(DataError, match="header"):
        split_program("x = 1\nreturn x")


# --- schedules ---------------------------------------------------------------------------------------------
def test_staged_schedule_slides_back_from_the_last_step():
    states = build_start_states(_records(10), "cot")
    lengths = [len(s) for s in states]
    sched = build_schedule("staged", states, threshold=0.5, window=2)
    assert sched.num_stages == max(lengths)
    for stage in range(max(lengths)):
        assert sched.stage == stage
        expected = [max(m - 1 - stage, 0) for m in lengths]
        assert [s.k for s in sched.current_pool()] == expected
        assert not sched.update(0.9, step=0)  # window 2: one good batch is not enough
        advanced = sched.update(0.6, step=1)
        assert advanced == (stage < max(lengths) - 1)
    assert all(s.k == 0 for s in sched.current_pool()) and sched.final
    assert not sched.update(1.0, step=99)  # the last stage is kept


def test_staged_schedule_budget_and_threshold():
    states = build_start_states(_records(6), "program")
    sched = build_schedule("staged", states, threshold=0.8, stage_steps=3)
    assert [sched.update(0.1, i) for i in range(3)] == [False, False, True]
    assert sched.stage == 1 and sched.metrics()["curriculum/steps_in_stage"] == 0
    assert sched.update(0.85, 3) and sched.stage == 2


def test_mixed_schedule_visits_every_state_once_per_epoch():
    states = build_start_states(_records(8), "cot")
    pool = Counter((s.record_id, s.k) for per in states for s in per)
    sched = build_schedule("mixed", states, seed=3)
    first = sched.sample(len(pool))
    second = sched.sample(len(pool))
    assert Counter((s.record_id, s.k) for s in first) == pool == Counter((s.record_id, s.k) for s in second)
    assert [(s.record_id, s.k) for s in first] != [(s.record_id, s.k) for s in second]  # reshuffled
    other = build_schedule("mixed", states, seed=4).sample(len(pool))
    assert [(s.record_id, s.k) for s in other] != [(s.record_id, s.k) for s in first]
    assert sched.metrics()["curriculum/mean_k"] == pytest.approx(
        sum(k for _, k in pool.elements()) / sum(pool.values()))


def test_plain_schedule_is_k0_only():
    states = build_start_states(_records(5), "cot")
    sched = build_schedule("none", states)
    assert sorted(s.record_id for s in sched.sample(5)) == sorted(per[0].record_id for per in states)
    assert all(s.k == 0 for s in sched.sample(12))


@pytest.mark.parametrize("name,options", [("mixed", {"seed": 1}), ("staged", {"seed": 1, "stage_steps": 2}),
                                          ("none", {})])
def test_resume_continues_the_same_order(name, options):
    states = build_start_states(_records(7), "cot")
    a = build_schedule(name, states, **options)
    key = [(s.record_id, s.k) for s in a.sample(40)]  # past the first epoch
    a.update(0.2, 0)
    saved = json.loads(json.dumps(a.state_dict()))
    rest = [(s.record_id, s.k) for s in a.sample(30)]
    a.update(0.2, 1)
    rest2 = [(s.record_id, s.k) for s in a.sample(9)]
    b = build_schedule(name, states, **options)
    b.load_state_dict(saved)
    assert [(s.record_id, s.k) for s in b.sample(30)] == rest
    b.update(0.2, 1)
    assert [(s.record_id, s.k) for s in b.sample(9)] == rest2
    assert key  # sampled before the save
    with pytest.raises(ConfigError):
        build_schedule("mixed" if name != "mixed" else "none", states).load_state_dict(saved)


def test_schedule_registry_and_config():
    states = build_start_states(_records(3), "cot")
    with pytest.raises(UnknownNameError, match="mixed"):
        build_schedule("random", states)
    with pytest.raises(ConfigError, match="bad options"):
        build_schedule("mixed", states, threshold=0.5)
    cfg = from_dict(CurriculumConfig, {"schedule": "staged", "kind": "program", "stage_steps": 4})
    sched = schedule_from_config(cfg, _records(4))
    assert sched.name == "staged" and sched.stage_steps == 4 and sched.current_pool()[0].kind == "program"


# --- readers -------------------------------------------------------------------------------------------------
def test_readers_and_their_errors(tmp_path):
    svamp = {"ID": "s1", "Body": "Jack had 8 pens.", "Question": "He lost 3. How many now?",
             "Equation": "( 8.0 - 3.0 )", "Answer": 5.0}
    gsm, prog, sv = parse_rows([GSM8K_ROW, PROGRAM_ROW, svamp])
    assert "<<" not in gsm.rationale and gsm.rationale.endswith("19 remain.") and gsm.answer == "19"
    assert prog.program and prog.answer == "21"
    assert sv.question == "Jack had 8 pens. He lost 3. How many now?" and sv.rationale == "( 8.0 - 3.0 ) = 5"
    path = tmp_path / "test.jsonl"
    path.write_text(json.dumps(GSM8K_ROW) + "\n" + json.dumps({"question": "q", "answer": "no marker"}) + "\n")
    with pytest.raises(DataError, match=r"row 1.*####"):
        load_reasoning(tmp_path, split="test")
    with pytest.raises(DataError, match="format"):
        parse_rows([{"text": "hi"}])
    assert isinstance(load_reasoning(path, limit=1)[0], ReasoningRecord)


# --- the bundled arithmetic set ------------------------------------------------------------------------------
_LINE = re.compile(r"^(\d+) ([+\-*]) (\d+) = (\d+)$")


def test_arith_mini_rationales_are_correct_and_small(tmp_path):
    folder = write_arith_mini(tmp_path / "arith", n_train=300, n_test=50, seed=1)
    train, test = load_reasoning(folder, "train"), load_reasoning(folder, "test")
    assert len(train) == 300 and len(test) == 50
    assert not {r.question for r in train} & {r.question for r in test}
    ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
    for record in train + test:
        lines = record.rationale.splitlines()
        first_value = int(re.search(r"has (\d+) ", record.question).group(1))
        value = first_value
        for line in lines:  # recompute every step independently of the generator
            a, op, b, c = _LINE.match(line).groups()
            assert int(a) == value and ops[op](int(a), int(b)) == int(c)
            value = int(c)
            assert 0 <= value <= MAX_VALUE
        assert record.answer == str(value) and 2 <= len(lines) <= 4
    # the program form computes the same value (run in the sandbox like any program; a sample of them)
    from mova.rl.sandbox import SandboxConfig, run_programs

    sample = (train + test)[:24]
    results = run_programs([r.program for r in sample], SandboxConfig(timeout_s=10))
    assert [res.answer for res in results] == [r.answer for r in sample]


def test_arith_mini_numbers_are_single_tokens_for_the_tiny_tokenizer():
    from pathlib import Path

    from transformers import AutoTokenizer

    import mova

    tok = AutoTokenizer.from_pretrained(str(Path(mova.__file__).parent / "assets" / "tiny-tokenizer"))
    numbers = set()
    for row in generate(200, 0, seed=2)["train"]:
        numbers |= set(re.findall(r"\d+", row["question"] + row["answer"] + row["program"]))
    for n in numbers:
        pieces = tok(" " + n, add_special_tokens=False).input_ids
        assert len(pieces) <= 2, (n, tok.convert_ids_to_tokens(pieces))
