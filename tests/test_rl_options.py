"""The RL stages with the supervised stages' memory and logging options: the policy in the recipe's dtype,
activation checkpointing, bf16 autocast, a learning-rate schedule with warmup (and its resume), per-part
rates, ``report_to`` (TensorBoard and W&B offline) with sample-completion tables, and ZeRO-3 (parameters
gathered for sampling) on 2 processes against 1."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest
import torch
import yaml

from mova.config import load_run_config
from mova.data.colour_task import COLOURS, OTHERS, write_colour_task
from mova.trainers.colour_policy import make_colour_policy
from mova.trainers.ppo import PpoTrainer, run_ppo
from tests.conftest import torchrun

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def colour(tmp_path_factory):
    root = tmp_path_factory.mktemp("rl_colour")
    data = write_colour_task(root / "data", n_prompts=32)
    return {"data": data, "policy": make_colour_policy(root / "policy", data, steps=60)}


def _overrides(colour, out, *extra):
    return [f"init_from={colour['policy']}", f"data.data_path={colour['data']['prompts']}", f"train.output_dir={out}",
            "train.learning_rate=1e-3", "train.report_to=[]", "train.save_steps=0", "ppo.reward_fn=word_fraction",
            f"ppo.reward_kwargs={{words: {COLOURS}}}", "ppo.rollout_batch_size=8", "ppo.mini_batch_size=4",
            "ppo.max_new_tokens=8", "ppo.preset=ppo_max", "ppo.critic_pretrain_iterations=0", *extra]


def _history(summary, key):
    return [h[key] for h in summary["history"]]


# --- schedule -------------------------------------------------------------------------------------------------
def test_policy_and_critic_follow_the_recipes_schedule_with_warmup(colour, tmp_path):
    """Cosine with 25% warmup over the run's optimizer steps, as transformers' scheduler computes it."""
    from transformers import get_scheduler

    summary = run_ppo(load_run_config(None, _overrides(colour, tmp_path / "run", "train.max_steps=4",
                                                       "train.lr_scheduler_type=cosine", "train.warmup_ratio=0.25",
                                                       "ppo.ppo_epochs=1"), stage="ppo"))
    steps = 4 * 2  # iterations x minibatches (8 / 4) x 1 epoch
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    ref = get_scheduler("cosine", opt, num_warmup_steps=math.ceil(steps * 0.25), num_training_steps=steps)
    want = []
    for _ in range(steps):
        want.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    # each iteration reports the rate its first minibatch stepped with
    assert _history(summary, "lr/policy") == pytest.approx(want[::2], rel=1e-6)
    assert _history(summary, "lr/critic") == pytest.approx(want[::2], rel=1e-6)
    assert _history(summary, "lr/policy")[0] == 0.0  # warmup starts at zero


class _Killed(BaseException):
    pass


class _DiesAfterCheckpoint2(PpoTrainer):
    def save_checkpoint(self) -> None:
        super().save_checkpoint()
        if self.iteration == 2:
            raise _Killed


def test_a_scheduled_run_resumes_with_its_schedule_where_it_stopped(colour, tmp_path):
    extra = ("train.max_steps=4", "train.save_steps=2", "train.lr_scheduler_type=cosine", "train.warmup_ratio=0.25")
    full = run_ppo(load_run_config(None, _overrides(colour, tmp_path / "full", *extra), stage="ppo"))
    with pytest.raises(_Killed):
        _DiesAfterCheckpoint2(load_run_config(None, _overrides(colour, tmp_path / "cut", *extra), stage="ppo")).train()
    resumed = run_ppo(load_run_config(None, _overrides(colour, tmp_path / "cut", *extra,
                                                       "train.resume_from_checkpoint=latest"), stage="ppo"))
    for key in ("lr/policy", "lr/critic", "objective/reward", "loss/policy", "loss/value"):
        assert _history(resumed, key) == pytest.approx(_history(full, key), rel=1e-5, abs=1e-6), key


# --- memory: dtype, checkpointing, autocast ------------------------------------------------------------------
def test_checkpointing_and_bf16_autocast_run_and_match_the_plain_run(colour, tmp_path, monkeypatch):
    """Activation checkpointing recomputes the same numbers (checked against a run without it); bf16 autocast
    runs the passes in bf16 (the policy's matmuls see bf16 inputs) and stays close to fp32."""
    base = ("train.max_steps=2", "ppo.temperature=0.0", "train.lr_scheduler_type=constant", "train.warmup_ratio=0")
    plain = run_ppo(load_run_config(None, _overrides(colour, tmp_path / "plain", *base), stage="ppo"))
    ckpt_trainer = PpoTrainer(load_run_config(None, _overrides(colour, tmp_path / "ckpt", *base,
                                                              "train.gradient_checkpointing=true"), stage="ppo"))
    assert ckpt_trainer.policy.model.gradient_checkpointing
    assert ckpt_trainer.critic_engine.module.backbone.model.gradient_checkpointing
    ckpt = ckpt_trainer.train()
    for key in ("objective/reward", "loss/policy", "loss/value", "objective/kl"):
        assert _history(ckpt, key) == pytest.approx(_history(plain, key), rel=1e-4, abs=1e-6), key

    seen: set[torch.dtype] = set()
    real = torch.nn.functional.linear

    def spy(x, w, b=None):
        seen.add(x.dtype if not torch.is_autocast_enabled("cpu") else torch.get_autocast_dtype("cpu"))
        return real(x, w, b)

    monkeypatch.setattr(torch.nn.functional, "linear", spy)
    bf16 = run_ppo(load_run_config(None, _overrides(colour, tmp_path / "bf16", *base, "train.bf16=true",
                                                    "train.gradient_checkpointing=true"), stage="ppo"))
    monkeypatch.undo()
    assert torch.bfloat16 in seen
    assert all(math.isfinite(v) for h in bf16["history"] for v in h.values() if isinstance(v, float))
    assert _history(bf16, "objective/reward")[0] == pytest.approx(_history(plain, "objective/reward")[0], abs=0.1)


def test_text_policy_loads_in_the_recipes_dtype(colour, tmp_path):
    fp32 = PpoTrainer(load_run_config(None, _overrides(colour, tmp_path / "a", "train.max_steps=1"), stage="ppo"))
    assert next(fp32.policy.parameters()).dtype == torch.float32
    bf16 = PpoTrainer(load_run_config(None, _overrides(colour, tmp_path / "b", "train.max_steps=1",
                                                       "model.dtype=bfloat16"), stage="ppo"))
    assert next(bf16.policy.parameters()).dtype == torch.bfloat16
    assert next(bf16.reference.parameters()).dtype == torch.bfloat16


# --- reporting -----------------------------------------------------------------------------------------------
def _wandb_records(path: Path) -> list:
    """The protobuf records of a W&B ``.wandb`` transaction log (the LevelDB log format W&B writes: a 7-byte
    header, 32 KiB blocks of records with a 7-byte header each: crc, length, type)."""
    from wandb.proto import wandb_internal_pb2 as pb

    raw = path.read_bytes()
    assert raw[:4] == b":W&B"
    block, pos, out, buf = 32768, 7, [], b""
    while pos + 7 <= len(raw):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, n, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        if n == 0 and kind == 0:
            pos += left
            continue
        buf += raw[pos + 7:pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):  # a full record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(buf)
            out.append(record)
            buf = b""
    return out


def test_wandb_offline_and_tensorboard_receive_ppo_metrics_and_completion_tables(colour, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wandb").mkdir()
    out = tmp_path / "run"
    summary = run_ppo(load_run_config(None, _overrides(colour, out, "train.max_steps=3", "train.logging_steps=2",
                                                       "train.report_to=[wandb, tensorboard]",
                                                       "ppo.log_completions=3"), stage="ppo"))
    runs = list((tmp_path / "wandb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    history = {}
    for record in _wandb_records(next(runs[0].glob("*.wandb"))):
        if record.WhichOneof("record_type") == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            history[items["_step"]] = items
    assert sorted(history) == [1, 2, 3]
    for h in summary["history"]:
        for key in ("objective/reward", "objective/kl", "loss/policy", "loss/value", "lr/policy"):
            assert history[h["iteration"]][key] == pytest.approx(h[key], rel=1e-6), key
    tables = sorted((runs[0] / "files" / "media" / "table").glob("completions_*.table.json"))
    assert [t.name.split("_")[1] for t in tables] == ["1", "2"]  # the first iteration, then every 2nd
    table = json.loads(tables[0].read_text())
    assert table["columns"] == ["step", "prompt", "completion", "score", "response_tokens"] and len(table["data"]) == 3

    rows = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 1, 1, 2, 2, 2]
    assert [r["completion"] for r in rows[:3]] == [row[2] for row in table["data"]]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "runs"), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("objective/reward")] == [1, 2, 3]
    assert [e.value for e in acc.Scalars("objective/reward")] == pytest.approx(
        _history(summary, "objective/reward"), rel=1e-6)
    assert "completions/text_summary" in acc.Tags()["tensors"]


def test_unknown_report_to_targets_are_named_not_silently_dropped(colour, tmp_path, caplog):
    run_ppo(load_run_config(None, _overrides(colour, tmp_path / "run", "train.max_steps=1",
                                             "train.report_to=[comet_ml]"), stage="ppo"))
    assert "comet_ml" in caplog.text and "get nothing" in caplog.text


# --- 2 processes under ZeRO-3 ---------------------------------------------------------------------------------
def test_two_process_zero3_ppo_gathers_the_policy_to_sample_and_matches_one_process(colour, tmp_path):
    recipe = {"stage": "ppo", "init_from": str(colour["policy"]), "data": {"data_path": str(colour["data"]["prompts"])},
              "train": {"max_steps": 3, "learning_rate": 3e-3, "save_steps": 0, "report_to": [],
                        "lr_scheduler_type": "cosine", "warmup_ratio": 0.2},
              "ppo": {"preset": "ppo_max", "critic_pretrain_iterations": 0, "reward_fn": "word_fraction",
                      "reward_kwargs": {"words": COLOURS + OTHERS[:6]}, "score_norm": "none",
                      "rollout_batch_size": 8, "mini_batch_size": 8,
                      "ppo_epochs": 2, "max_new_tokens": 8, "temperature": 0.0}}
    path = tmp_path / "ppo.yaml"
    path.write_text(yaml.safe_dump(recipe))
    # scripts/zero3.json, with every parameter partitioned (the tiny model's are all below the default
    # persistence threshold, which would keep them whole on every rank and test nothing)
    ds = json.loads((ROOT / "scripts" / "zero3.json").read_text())
    ds["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    (tmp_path / "zero3.json").write_text(json.dumps(ds))
    one = run_ppo(load_run_config(path, [f"train.output_dir={tmp_path / 'one'}"]))
    out = tmp_path / "two"
    torchrun("-m", "mova.cli", "train", "ppo", "--config", path, f"train.output_dir={out}",
             f"train.deepspeed={tmp_path / 'zero3.json'}")
    two = json.loads((out / "summary.json").read_text())
    assert two["world_size"] == 2
    assert one["history"][-1]["objective/kl"] > 1e-3, one["history"]  # the policy moved
    for key in ("objective/reward", "objective/kl", "loss/policy", "loss/value", "policy/clipfrac", "lr/policy"):
        got = [h[key] for h in two["history"]]
        want = [h[key] for h in one["history"]]
        assert got == pytest.approx(want, rel=2e-3, abs=1e-5), key
    # the final policy was gathered from its shards: it loads and equals no start policy
    from transformers import AutoModelForCausalLM

    final = AutoModelForCausalLM.from_pretrained(two["final_model"])
    start = AutoModelForCausalLM.from_pretrained(colour["policy"])
    one_final = AutoModelForCausalLM.from_pretrained(one["final_model"])
    moved = sum((a - b).abs().sum() for a, b in zip(final.parameters(), start.parameters()))
    assert moved > 0
    for a, b in zip(final.parameters(), one_final.parameters()):
        torch.testing.assert_close(a, b, rtol=2e-3, atol=2e-4)
