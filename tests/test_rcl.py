"""RCL: teacher paths are kept only when their answer is right, and generation resumes without redoing work."""

from __future__ import annotations

import json

import pytest

from mova.continual.config import RclOptions
from mova.continual.rcl import generate_paths, rcl_records, split_path, teacher_prompt
from mova.data.trace import load_task


def _task(tmp_path, n=10):
    folder = tmp_path / "add"
    folder.mkdir()
    records = [{"prompt": f"Add: {i} and 1\nAnswer:", "answer": str(i + 1)} for i in range(n)]
    (folder / "train.json").write_text(json.dumps(records))
    (folder / "task.json").write_text(json.dumps({"metric": "accuracy"}))
    (folder / "rcl_demos.json").write_text(json.dumps([{"prompt": "Add: 2 and 2\nAnswer:", "reasoning": "2 plus 2.",
                                                        "answer": "4"}]))
    return load_task(folder), records


class CountingTeacher:
    """Right on even-numbered prompts, wrong on odd ones; counts calls and prompts; can fail on a call."""

    def __init__(self, fail_on_call: int | None = None):
        self.calls = 0
        self.prompts: list[str] = []
        self.fail_on_call = fail_on_call

    def __call__(self, prompts: list[str]) -> list[str]:
        self.calls += 1
        if self.fail_on_call == self.calls:
            raise KeyboardInterrupt("simulated kill")
        self.prompts += prompts
        outs = []
        for p in prompts:
            i = int(p.rsplit("Add: ", 1)[1].split(" ")[0])
            answer = i + 1 if i % 2 == 0 else i + 2
            outs.append(f"{i} plus 1.\nAnswer: {answer}\n\nAdd: 9 and 9\nAnswer: 18")
        return outs


def test_teacher_prompt_has_demos_and_split_reads_answer(tmp_path):
    task, records = _task(tmp_path)
    prompt = teacher_prompt(task, records[3]["prompt"], [json.loads((task.folder / "rcl_demos.json").read_text())[0]],
                            RclOptions())
    assert prompt.startswith(RclOptions().instruction)
    assert "Add: 2 and 2\nAnswer: 2 plus 2.\nAnswer: 4" in prompt and prompt.endswith(records[3]["prompt"])
    assert split_path("x is y.\nAnswer: 5\n\nAdd: 1 and 1\nAnswer: 2", "Answer:") == ("x is y.", "5")
    assert split_path("no marker here", "Answer:") == ("no marker here", None)


def test_filter_keeps_only_matching_answers(tmp_path):
    task, records = _task(tmp_path)
    opts = RclOptions(batch_size=4)
    paths = generate_paths(task, records, CountingTeacher(), opts, tmp_path / "paths", progress=False)
    assert [p["kept"] for p in paths] == [i % 2 == 0 for i in range(len(records))]
    train, counts = rcl_records(records, paths, opts)
    assert counts == {"total": 10, "kept": 5, "not_kept": 5, "answer_only": 0}
    assert [r["prompt"] for r in train] == [records[i]["prompt"] for i in range(0, 10, 2)]
    # Reasoning first, then the gold answer after the marker.
    assert train[1]["answer"] == "2 plus 1.\nAnswer: 3"
    train, counts = rcl_records(records, paths, RclOptions(unverified="answer"))
    assert len(train) == 10 and counts["answer_only"] == 5 and train[1]["answer"] == records[1]["answer"]


def test_generation_resumes_without_redoing_examples(tmp_path):
    task, records = _task(tmp_path, n=10)
    opts = RclOptions(batch_size=3)
    killed = CountingTeacher(fail_on_call=3)  # batches 1 and 2 (6 examples) finish, then a kill
    with pytest.raises(KeyboardInterrupt):
        generate_paths(task, records, killed, opts, tmp_path / "paths", progress=False)
    lines = (tmp_path / "paths" / "paths.jsonl").read_text().splitlines()
    assert len(lines) == 6
    # A torn last line (killed mid-write) is regenerated, not trusted.
    with (tmp_path / "paths" / "paths.jsonl").open("a") as f:
        f.write('{"index": 6, "outp')
    again = CountingTeacher()
    paths = generate_paths(task, records, again, opts, tmp_path / "paths", progress=False)
    assert again.calls == 2  # examples 6..9 in batches of 3
    done_prompts = [p.rsplit("Add: ", 1)[1] for p in again.prompts]
    assert done_prompts == [r["prompt"].split("Add: ")[1] for r in records[6:]]
    assert [p["index"] for p in paths] == list(range(10))
    assert [p["kept"] for p in paths] == [i % 2 == 0 for i in range(10)]
    third = CountingTeacher()
    generate_paths(task, records, third, opts, tmp_path / "paths", progress=False)
    assert third.calls == 0
    with pytest.raises(Exception, match="another setting"):
        generate_paths(task, records[:5], third, opts, tmp_path / "paths", progress=False, teacher_name="x")
