"""The continual loop: OP/BWT/FWT, strategies, resume after a kill, and `mova train continual` end to end."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from mova.config import TrainConfig
from mova.continual.config import ContinualConfig, EvalOptions, ReplayOptions, load_continual_config
from mova.continual.loop import run_strategy
from mova.continual.scores import bwt, fwt, op, summarize
from mova.continual.strategies import Ewc, build_strategy
from mova.data.trace import task_order
from mova.data.trace_mini import write_mini_trace

# --- scores ---------------------------------------------------------------------------------------

R = [[0.8, 0.1, None],
     [0.6, 0.9, 0.3],
     [0.5, 0.7, 0.6]]
B = [0.05, 0.1, 0.2]


def test_op_bwt_fwt_hand_computed():
    assert op(R, 0) == pytest.approx(0.8)
    assert op(R, 1) == pytest.approx((0.6 + 0.9) / 2)
    assert op(R, 2) == pytest.approx((0.5 + 0.7 + 0.6) / 3)
    assert bwt(R, 0) is None
    assert bwt(R, 1) == pytest.approx(0.6 - 0.8)
    assert bwt(R, 2) == pytest.approx(((0.5 - 0.8) + (0.7 - 0.9)) / 2)
    # FWT: R[0][1] - b_1 = 0.1 - 0.1, R[1][2] - b_2 = 0.3 - 0.2
    assert fwt(R, B) == pytest.approx((0.0 + 0.1) / 2)
    s = summarize(R, B)
    assert s["OP"] == pytest.approx(0.6) and s["BWT"] == pytest.approx(-0.25)
    assert fwt(R, None) is None
    assert fwt([[0.8, None, None]], B) is None  # the entry FWT needs is missing


def test_scores_vs_numpy_on_random_matrices():
    rng = np.random.default_rng(0)
    for T in (2, 4, 7):
        M = rng.random((T, T))
        b = rng.random(T)
        rows = M.tolist()
        for t in range(T):
            assert op(rows, t) == pytest.approx(np.tril(M)[t, : t + 1].mean())
            if t:
                assert bwt(rows, t) == pytest.approx((M[t, :t] - np.diag(M)[:t]).mean())
        assert fwt(rows, b.tolist()) == pytest.approx((np.diag(M, 1) - b[1:]).mean())


# --- strategies -----------------------------------------------------------------------------------

def _cfg(tmp_path, tasks_dir, model, **kw) -> ContinualConfig:
    train = TrainConfig(max_steps=2, per_device_train_batch_size=4, learning_rate=1e-3, save_steps=0,
                        report_to=[], logging_steps=1, warmup_ratio=0.0)
    ev = EvalOptions(limit=3, batch_size=8, max_new_tokens=3)
    return ContinualConfig(model=str(model), tasks_dir=str(tasks_dir), output_dir=str(tmp_path / "out"),
                           train_limit=12, train=train, eval=ev, **kw)


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    from mova.continual.tiny import save_tiny_lm

    root = tmp_path_factory.mktemp("mini")
    write_mini_trace(root / "data", n_train=20, n_eval=2, n_test=4, tasks=["stance", "code", "numeric"])
    save_tiny_lm(root / "base")
    return root


def test_replay_mixes_a_share_of_earlier_tasks(mini, tmp_path):
    cfg = _cfg(tmp_path, mini / "data", mini / "base", replay=ReplayOptions(fraction=0.25))
    tasks = task_order(cfg.tasks_dir)
    strategy = build_strategy("replay", cfg, tasks, tmp_path)
    records = strategy.records_for(2)
    prompts = [r["prompt"] for r in records]
    own = [r["prompt"] for r in tasks[2].records("train", 12)]
    assert sorted(p for p in prompts if p.startswith("Add:")) == sorted(own)
    assert sum(p.startswith("Stance:") for p in prompts) == 3  # 25 % of 12
    assert sum(p.startswith("Complete:") for p in prompts) == 3
    assert len(strategy.records_for(0)) == 12  # nothing earlier to replay


def test_ewc_penalty_matches_formula(mini, tmp_path):
    from mova.inference.generation import load_model

    cfg = _cfg(tmp_path, mini / "data", mini / "base")
    cfg.ewc.weight = 3.0
    tasks = task_order(cfg.tasks_dir)
    model, tok = load_model(str(mini / "base"), device="cpu")
    ewc = build_strategy("ewc", cfg, tasks, tmp_path)
    assert isinstance(ewc, Ewc) and ewc.extra_loss() is None
    ewc.after_task(0, model, tok, [])
    assert set(ewc.fisher) == {n for n, _ in model.named_parameters()}
    assert sum(float(f.sum()) for f in ewc.fisher.values()) > 0
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.01)
    expected = 0.0
    for n, p in model.named_parameters():
        expected += float((ewc.fisher[n].double() * (p.detach().double() - ewc.anchor[n].double()) ** 2).sum())
    assert float(ewc.extra_loss()(model).detach()) == pytest.approx(1.5 * expected, rel=1e-4)
    ewc.save_state()
    again = build_strategy("ewc", cfg, tasks, tmp_path)
    again.load_state()
    assert float(again.extra_loss()(model).detach()) == pytest.approx(1.5 * expected, rel=1e-4)


# --- text SFT samples -----------------------------------------------------------------------------

def test_prompt_answer_labels_cover_only_the_answer(mini):
    from transformers import AutoTokenizer

    from mova.trainers.text_sft import PromptAnswerCollator, encode_prompt_answer

    tok = AutoTokenizer.from_pretrained(str(mini / "base"))
    s = encode_prompt_answer(tok, "Add: 3 and 4\nAnswer:", "7")
    prompt_ids = tok("Add: 3 and 4\nAnswer:", add_special_tokens=False).input_ids
    answer_ids = tok(" 7", add_special_tokens=False).input_ids + [tok.eos_token_id]
    assert s["input_ids"] == [tok.bos_token_id] + prompt_ids + answer_ids
    assert s["labels"] == [-100] * (1 + len(prompt_ids)) + answer_ids
    cut = encode_prompt_answer(tok, "Add: 3 and 4\nAnswer:", "7", max_length=len(answer_ids) + 3)
    assert cut["input_ids"] == [tok.bos_token_id] + prompt_ids[-2:] + answer_ids  # prompt cut from the left
    batch = PromptAnswerCollator(tok.pad_token_id)([s, cut])
    assert batch["attention_mask"][1].sum() == len(cut["input_ids"])
    assert (batch["labels"][1, len(cut["input_ids"]):] == -100).all()


def test_lora_strategy_trains_adapters_and_merges_them(mini, tmp_path):
    from mova.inference.generation import load_model
    from mova.trainers.text_sft import train_prompt_answer

    cfg = _cfg(tmp_path, mini / "data", mini / "base")
    tasks = task_order(cfg.tasks_dir)
    train_cfg = build_strategy("lora", cfg, tasks, tmp_path).train_config(cfg.train)
    assert train_cfg.lora.r == 8 and train_cfg.lora.merge
    model, tok = load_model(str(mini / "base"), device="cpu")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_prompt_answer(model, tok, tasks[0].records("train", 8), train_cfg, tmp_path / "lora")
    after = dict(model.named_parameters())
    assert set(after) == set(before)  # merged: no adapter weights left behind
    changed = {n for n in before if not torch.equal(before[n], after[n].detach())}
    assert changed and all(any(m in n for m in ("q_proj", "k_proj", "v_proj", "o_proj")) for n in changed)


# --- the loop: resume -----------------------------------------------------------------------------

class Killed(Exception):
    pass


def test_resume_after_kill_continues_at_next_task(mini, tmp_path):
    cfg = _cfg(tmp_path, mini / "data", mini / "base")
    seen: list[int] = []

    def kill_after_first(name, t, state):
        seen.append(t)
        if t == 0:
            raise Killed

    with pytest.raises(Killed):
        run_strategy(cfg, "seqft", on_task_end=kill_after_first)
    state_file = tmp_path / "out" / "seqft" / "state.json"
    first = json.loads(state_file.read_text())
    assert len(first["R"]) == 1
    model_0 = tmp_path / "out" / "seqft" / "tasks" / "00-stance" / "model" / "model.safetensors"
    before = model_0.read_bytes()

    result = run_strategy(cfg, "seqft", on_task_end=lambda n, t, s: seen.append(t))
    assert seen == [0, 1, 2]  # task 0 was not trained again
    assert result["R"][0] == first["R"][0]
    assert result["baseline"] == first["baseline"]
    assert len(result["R"]) == 3 and result["complete"]
    assert model_0.read_bytes() == before
    assert [t["task"] for t in result["train"]] == ["stance", "code", "numeric"]
    model_1 = tmp_path / "out" / "seqft" / "tasks" / "01-code" / "model" / "model.safetensors"
    assert model_1.read_bytes() != before
    # FWT and BWT come from the stored rows
    R_ = result["R"]
    assert result["BWT"] == pytest.approx(((R_[2][0] - R_[0][0]) + (R_[2][1] - R_[1][1])) / 2)
    # a third call has nothing left to do
    assert run_strategy(cfg, "seqft", on_task_end=lambda n, t, s: seen.append(t))["R"] == R_
    assert seen == [0, 1, 2]


def test_probe_with_chat_template_puts_each_prompt_in_a_user_turn(mini, tmp_path):
    """A probe with ``chat_template: true`` reaches the model as a user turn of its template; the default and
    the tasks themselves stay raw."""
    from mova.continual.loop import _score_probes
    from mova.inference.generation import load_model

    probe = mini / "data" / "numeric" / "test.json"
    ev = EvalOptions(limit=3, batch_size=8, max_new_tokens=3, probes=[
        {"name": "raw", "path": str(probe), "metric": "accuracy", "max_new_tokens": 2, "limit": 2},
        {"name": "chat", "path": str(probe), "metric": "accuracy", "max_new_tokens": 2, "limit": 2,
         "chat_template": True}])
    cfg = ContinualConfig(model=str(mini / "base"), tasks_dir=str(mini / "data"), output_dir=str(tmp_path),
                          eval=ev)
    model, tok = load_model(str(mini / "base"), device="cpu")
    scores = _score_probes(cfg, build_strategy("seqft", cfg, task_order(cfg.tasks_dir), tmp_path), model, tok,
                           tmp_path)
    assert set(scores) == {"raw", "chat"}
    gold = [r["prompt"] for r in json.loads(probe.read_text())[:2]]
    raw = [json.loads(line)["prompt"] for line in (tmp_path / "probe_raw.jsonl").open()]
    chat = [json.loads(line)["prompt"] for line in (tmp_path / "probe_chat.jsonl").open()]
    assert raw == gold
    # the tiny tokenizer's template: "USER: <text>\nASSISTANT:"
    assert chat == [f"USER: {g}\nASSISTANT:" for g in gold]


# --- end to end through the command line -----------------------------------------------------------

def test_mova_train_continual_cli(mini, tmp_path, capsys):
    from mova.cli import main

    yaml = tmp_path / "c.yaml"
    yaml.write_text(
        f"model: {mini / 'base'}\ntasks_dir: {mini / 'data'}\norder: [stance, code]\n"
        f"strategies: [seqft, replay]\noutput_dir: {tmp_path / 'run'}\ntrain_limit: 12\n"
        "train: {max_steps: 2, per_device_train_batch_size: 4, save_steps: 0, report_to: [], logging_steps: 1}\n"
        "eval: {limit: 3, batch_size: 8, max_new_tokens: 3, probes: [{name: add, path: "
        f"{mini / 'data' / 'numeric' / 'test.json'}, metric: accuracy, max_new_tokens: 3, limit: 2}}]}}\n"
        "replay: {fraction: 0.5}\n")
    assert main(["train", "continual", "--config", str(yaml), "eval.eval_next=false"]) == 0
    out = capsys.readouterr().out
    assert "| strategy | OP | BWT | FWT |" in out and "| seqft |" in out and "| replay |" in out
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert set(report) == {"seqft", "replay"}
    for r in report.values():
        assert len(r["R"]) == 2 and r["R"][0][1] is None  # eval_next=false: the next task was not scored
        assert r["OP"] == pytest.approx((r["R"][1][0] + r["R"][1][1]) / 2)
        assert r["FWT"] is None
    assert report["replay"]["notes"]["replayed"]["code"] == {"stance": 6}
    probes = report["seqft"]["probes"]
    assert len(probes["after_task"]) == 2
    assert probes["final_delta"]["add"] == pytest.approx(probes["after_task"][-1]["add"] - probes["start"]["add"])
    assert (tmp_path / "run" / "R_seqft.png").is_file() and (tmp_path / "run" / "report.md").is_file()

    # `mova eval run --tasks trace` on the last checkpoint scores what the loop scored after the last task.
    final = tmp_path / "run" / "seqft" / "tasks" / "01-code" / "model"
    assert main(["eval", "run", "--checkpoint", str(final), "--tasks", "trace", "--task-option",
                 f"trace.tasks_dir={mini / 'data'}", "--task-option", "trace.order=stance,code", "--limit", "3",
                 "--batch-size", "8", "--max-new-tokens", "3", "--out-dir", str(tmp_path / "eval"),
                 "--device", "cpu", "--no-progress"]) == 0
    metrics = json.loads((tmp_path / "eval" / "model" / "summary.json").read_text())["tasks"]["trace"]["metrics"]
    assert metrics["stance"] == pytest.approx(report["seqft"]["R"][1][0])
    assert metrics["code"] == pytest.approx(report["seqft"]["R"][1][1])


def test_config_overrides_and_errors(tmp_path):
    cfg = load_continual_config(None, ["model=m", "tasks_dir=d", "strategies=[seqft,ewc]", "epochs.stance=3",
                                       "train.learning_rate=5e-4", "rcl.min_score=0.5"])
    assert cfg.strategies == ["seqft", "ewc"] and cfg.epochs == {"stance": 3}
    assert cfg.train.learning_rate == 5e-4 and cfg.rcl.min_score == 0.5
    with pytest.raises(Exception, match="unknown key"):
        load_continual_config(None, ["model=m", "tasks_dir=d", "nope=1"])
    with pytest.raises(Exception, match="model is required"):
        load_continual_config(None, ["tasks_dir=d"])
    random.seed(0)


def test_mova_checkpoint_trains_text_only(mini, tmp_path):
    """A Mova VLM checkpoint runs the loop text-only: its LLM learns, its experts and fusion stay as they were."""
    from safetensors.torch import load_file

    from mova.model.builder import build_model
    from tests.conftest import tiny_model_config

    model, processor = build_model(tiny_model_config(), load_weights=False)
    model.save_pretrained(tmp_path / "mova")
    processor.save_pretrained(tmp_path / "mova")
    cfg = _cfg(tmp_path, mini / "data", tmp_path / "mova", order=["stance"])
    cfg.eval.baseline = False
    result = run_strategy(cfg, "seqft")
    assert len(result["R"]) == 1 and result["R"][0][0] is not None
    start = load_file(str(tmp_path / "mova" / "model.safetensors"))
    after = load_file(str(tmp_path / "out" / "seqft" / "tasks" / "00-stance" / "model" / "model.safetensors"))
    assert set(start) == set(after)
    changed = {k for k in start if not torch.equal(start[k], after[k])}
    assert changed and all(k.startswith("language_model.") for k in changed)
