"""TRACE-layout loading and the generated mini TRACE."""

from __future__ import annotations

import json

import pytest

from mova.data.trace import TRACE_METRICS, TRACE_ORDER, load_task, read_split, task_order
from mova.data.trace_mini import MINI_METRICS, MINI_ORDER, write_mini_trace
from mova.errors import DataError


def test_mini_trace_layout_and_determinism(tmp_path):
    a = write_mini_trace(tmp_path / "a", n_train=12, n_eval=3, n_test=5, seed=3)
    b = write_mini_trace(tmp_path / "b", n_train=12, n_eval=3, n_test=5, seed=3)
    tasks = task_order(a)
    assert [t.name for t in tasks] == MINI_ORDER  # order.json
    assert {t.name: t.metric for t in tasks} == MINI_METRICS
    assert len(set(MINI_METRICS.values())) == 4  # accuracy, rouge_l, edit_similarity, sari
    for task in tasks:
        sizes = {s: len(task.records(s)) for s in ("train", "eval", "test")}
        assert sizes == {"train": 12, "eval": 3, "test": 5}
        assert all("reasoning" in r for r in task.records("train"))
        assert not any("reasoning" in r for r in task.records("test"))
        for split in ("train", "eval", "test"):
            assert (a / task.name / f"{split}.json").read_text() == (b / task.name / f"{split}.json").read_text()
    simplify = next(t for t in tasks if t.name == "simplify")
    assert all(r["source"] in r["prompt"] for r in simplify.records("test"))


def test_mini_answers_follow_their_rules(tmp_path):
    tasks = {t.name: t for t in task_order(write_mini_trace(tmp_path, n_train=40, n_eval=1, n_test=1))}
    for r in tasks["numeric"].records("train"):
        a, b = (int(x) for x in r["prompt"].split("Add: ")[1].split("\n")[0].split(" and "))
        assert r["answer"] == str(a + b)
    for r in tasks["stance"].records("train"):
        warm = any(w in r["prompt"].split() for w in ("red", "pink", "orange", "yellow"))
        assert r["answer"] == ("yes" if warm else "no")
    assert {r["answer"] for r in tasks["stance"].records("train")} == {"yes", "no"}


def test_trace_order_and_metrics(tmp_path):
    for name in TRACE_ORDER:
        (tmp_path / name).mkdir()
        (tmp_path / name / "train.json").write_text(json.dumps([{"prompt": "p", "answer": "a"}]))
    tasks = task_order(tmp_path)
    assert [t.name for t in tasks] == TRACE_ORDER
    assert tasks[TRACE_ORDER.index("20Minuten")].metric == "sari"
    assert tasks[TRACE_ORDER.index("Py150")].metric == TRACE_METRICS["Py150"] == "edit_similarity"
    assert [t.name for t in task_order(tmp_path, ["FOMC", "C-STANCE"])] == ["FOMC", "C-STANCE"]
    with pytest.raises(DataError, match="not found"):
        task_order(tmp_path, ["FOMC", "NoSuchTask"])


def test_bad_records_are_named(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps([{"prompt": "p", "answer": "a"}, {"prompt": "p", "answer": 3}]))
    with pytest.raises(DataError, match="record 1"):
        read_split(path)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "train.json").write_text("[]")
    with pytest.raises(DataError, match="no metric known"):
        load_task(tmp_path / "other")
