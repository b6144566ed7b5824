"""GRPO / RLOO: advantages and loss against loops written from the formulas, a tiny run that raises the
reward, resume, and VLM groups whose image goes through the experts once."""

from __future__ import annotations

import math
import random

import pytest
import torch

from mova.config import load_run_config
from mova.data.colour_task import COLOURS, write_colour_task
from mova.errors import ConfigError
from mova.rl import grpo_math as gm
from mova.trainers.colour_policy import make_colour_policy
from mova.trainers.grpo import GrpoTrainer, run_grpo
from mova.trainers.grpo_config import GrpoConfig


# --- the maths, against plain loops ---------------------------------------------------------------------
def _loop_advantages(scores: list[float], G: int, how: str, scale: bool = True, eps: float = 1e-4) -> list[float]:
    out = []
    for start in range(0, len(scores), G):
        group = scores[start:start + G]
        mean = sum(group) / G
        std = math.sqrt(sum((x - mean) ** 2 for x in group) / (G - 1))
        for x in group:
            if how == "rloo":
                out.append(x - (sum(group) - x) / (G - 1))
            else:
                out.append((x - mean) / (std + eps) if scale else x - mean)
    return out


@pytest.mark.parametrize("how,scale", [("grpo", True), ("grpo", False), ("rloo", True)])
def test_group_advantages_match_the_formulas(how, scale):
    rng = random.Random(0)
    G = 4
    scores = [rng.choice([0.0, 0.2, 1.0]) + rng.random() * 0.1 for _ in range(3 * G)]
    scores[G:2 * G] = [0.5] * G  # a group that scored alike: no signal
    got = gm.group_advantages(how, torch.tensor(scores), G, scale_by_std=scale)
    want = _loop_advantages(scores, G, how, scale)
    assert got.tolist() == pytest.approx(want, abs=1e-5)
    assert got[G:2 * G].abs().max() == 0.0
    if how == "rloo":  # leave-one-out: A_i = G/(G-1) (r_i - mean)
        assert got.tolist() == pytest.approx(_loop_advantages([s * G / (G - 1) for s in scores], G, "grpo", False),
                                             abs=1e-5)
    with pytest.raises(ValueError, match="groups of"):
        gm.group_advantages(how, torch.zeros(7), G)


def _loop_loss(logp, old, ref, adv, mask, clip, beta, est, agg):
    per_row, total, count = [], 0.0, 0
    for b in range(len(logp)):
        row_sum, row_n = 0.0, 0
        for t in range(len(logp[b])):
            if not mask[b][t]:
                continue
            ratio = math.exp(logp[b][t] - old[b][t])
            surrogate = max(-adv[b] * ratio, -adv[b] * min(max(ratio, 1 - clip), 1 + clip))
            if est == "k1":
                kl = logp[b][t] - ref[b][t]
            else:  # k3: exp(ref - logp) - (ref - logp) - 1
                kl = math.exp(ref[b][t] - logp[b][t]) - (ref[b][t] - logp[b][t]) - 1
            value = surrogate + beta * kl
            row_sum, row_n = row_sum + value, row_n + 1
        per_row.append(row_sum / row_n)
        total, count = total + row_sum, count + row_n
    return total / count if agg == "token_mean" else sum(per_row) / len(per_row)


@pytest.mark.parametrize("est,agg", [("k1", "token_mean"), ("k3", "token_mean"), ("k3", "sequence_mean")])
def test_grpo_loss_matches_a_loop(est, agg):
    g = torch.Generator().manual_seed(1)
    B, T = 5, 6
    logp = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    old = logp + torch.randn(B, T, generator=g, dtype=torch.float64) * 0.4  # ratios in and out of the clip range
    ref = logp + torch.randn(B, T, generator=g, dtype=torch.float64) * 0.5
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    mask = torch.ones(B, T, dtype=torch.float64)
    for b, n in enumerate([6, 2, 4, 1, 5]):
        mask[b, n:] = 0
    out = gm.grpo_loss(logp, old, ref, adv, mask, cliprange=0.2, kl_coef=0.1, kl_estimator=est, aggregation=agg)
    want = _loop_loss(logp.tolist(), old.tolist(), ref.tolist(), adv.tolist(), mask.tolist(), 0.2, 0.1, est, agg)
    assert float(out.loss) == pytest.approx(want, abs=1e-9)
    assert float(out.policy_loss) == pytest.approx(
        _loop_loss(logp.tolist(), old.tolist(), ref.tolist(), adv.tolist(), mask.tolist(), 0.2, 0.0, est, agg),
        abs=1e-9)
    assert 0.0 < float(out.clipfrac) < 1.0


def test_config_checks_the_group_sizes():
    with pytest.raises(ConfigError, match="multiple"):
        GrpoConfig(rollout_batch_size=3, num_generations=3, mini_batch_size=4)
    assert GrpoConfig().ppo_epochs == 1 and GrpoConfig().critic_pretrain_iterations == 0
    with pytest.raises(ConfigError, match="advantage"):
        load_run_config(None, ["grpo.advantage=ppo"], stage="grpo")


# --- end to end ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def colour(tmp_path_factory):
    root = tmp_path_factory.mktemp("grpo_colour")
    data = write_colour_task(root / "data", n_prompts=16)
    return {"data": data, "policy": make_colour_policy(root / "policy", data, steps=40)}


def _overrides(colour, out, *extra):
    return [f"init_from={colour['policy']}", f"data.data_path={colour['data']['prompts']}", f"train.output_dir={out}",
            "train.learning_rate=1e-3", "train.report_to=[]", "train.save_steps=0", "train.lr_scheduler_type=constant",
            "train.warmup_ratio=0", "grpo.reward_fn=word_fraction", f"grpo.reward_kwargs={{words: {COLOURS}}}",
            "grpo.rollout_batch_size=4", "grpo.num_generations=4", "grpo.mini_batch_size=8", "grpo.max_new_tokens=10",
            *extra]


def test_grpo_raises_the_colour_reward(colour, tmp_path):
    summary = run_grpo(load_run_config(None, _overrides(colour, tmp_path / "run", "train.max_steps=14"), stage="grpo"))
    h = summary["history"]
    assert len(h) == 14 and summary["stage"] == "grpo"
    first = sum(x["objective/reward"] for x in h[:3]) / 3
    last = sum(x["objective/reward"] for x in h[-3:]) / 3
    assert last > first + 0.2, (first, last)
    # PPO's names for what both report, no critic's
    assert {"objective/reward", "objective/kl", "objective/entropy", "objective/ppl", "response_length",
            "loss/policy", "policy/clipfrac", "policy/approxkl", "grad_norm/policy", "time/generate", "time/train",
            "samples_per_second", "group/reward_std"} <= set(h[-1])
    assert not any(k.startswith(("val/", "loss/value")) for k in h[-1])
    assert (tmp_path / "run" / "grpo_curves.png").is_file()


def test_rloo_with_the_kl_in_the_reward_runs_with_finite_metrics(colour, tmp_path):
    summary = run_grpo(load_run_config(None, _overrides(
        colour, tmp_path / "rloo", "train.max_steps=3", "grpo.advantage=rloo", "grpo.kl_penalty=reward",
        "grpo.kl_estimator=k1", "grpo.loss_aggregation=sequence_mean", "grpo.epochs=2"), stage="grpo"))
    last = summary["last_metrics"]
    assert all(math.isfinite(v) for v in last.values() if isinstance(v, float))
    assert last["objective/kl"] != 0.0  # the policy moved


def test_resume_continues_exactly_where_the_run_stopped(colour, tmp_path):
    base = ("train.save_steps=2",)
    full = run_grpo(load_run_config(None, _overrides(colour, tmp_path / "full", *base, "train.max_steps=4"),
                                    stage="grpo"))
    run_grpo(load_run_config(None, _overrides(colour, tmp_path / "cut", *base, "train.max_steps=2"), stage="grpo"))
    resumed = run_grpo(load_run_config(None, _overrides(colour, tmp_path / "cut", *base, "train.max_steps=4",
                                                        "train.resume_from_checkpoint=latest"), stage="grpo"))
    assert [h["iteration"] for h in resumed["history"]] == [1, 2, 3, 4]
    assert full["history"][-1]["objective/kl"] > 1e-3
    for key in ("objective/reward", "loss/policy", "objective/kl", "policy/clipfrac"):
        got = [h[key] for h in resumed["history"]]
        want = [h[key] for h in full["history"]]
        assert got == pytest.approx(want, abs=1e-5), key


# --- VLM -------------------------------------------------------------------------------------------------------
def test_vlm_grpo_runs_each_image_through_the_experts_once_per_group(tmp_path):
    from mova.data.spavl_mini import write_spavl_mini
    from mova.model.builder import build_model
    from mova.rl.reward_model import RewardModel
    from tests.conftest import tiny_model_config

    data = write_spavl_mini(tmp_path / "spavl", n_train=4, n_validation=2, n_test_per_split=2, seed=0)
    torch.manual_seed(0)
    model, processor = build_model(tiny_model_config(), load_weights=False)
    model.save_pretrained(tmp_path / "init")
    processor.save_pretrained(tmp_path / "init")
    rm = RewardModel.from_backbone(model)
    torch.nn.init.normal_(rm.score_head.weight, std=0.5)
    rm.save_pretrained(tmp_path / "rm", processor=processor)
    cfg = load_run_config(None, [f"init_from={tmp_path / 'init'}", f"data.data_path={data}",
                                 f"train.output_dir={tmp_path / 'vlm'}", "train.report_to=[]", "train.save_steps=0",
                                 "train.max_steps=2", "train.learning_rate=1e-3",
                                 f"grpo.reward_model={tmp_path / 'rm'}",
                                 "grpo.rollout_batch_size=2", "grpo.num_generations=3", "grpo.mini_batch_size=3",
                                 "grpo.max_new_tokens=5", "grpo.train_fusion=true"], stage="grpo")
    trainer = GrpoTrainer(cfg)
    assert trainer.critic_engine is None
    calls: dict[str, int] = {}

    def count(name):
        def hook(module, args, output):
            calls[name] = calls.get(name, 0) + args[0].shape[0]
        return hook

    pixel = [n for n, e in trainer.policy.experts.items() if e.input_kind == "pixels"]
    for name in pixel:
        trainer.policy.experts[name].register_forward_hook(count(name))
        trainer.reference.experts[name].register_forward_hook(count(f"ref.{name}"))
        trainer.reward_model.backbone.experts[name].register_forward_hook(count(f"rm.{name}"))
    summary = trainer.train()
    # 2 iterations x 2 prompts with an image each: each expert saw 4 images, not 4 x 3 responses
    assert {n: calls.get(n, 0) for n in pixel} == {n: 4 for n in pixel}
    assert not any(k.startswith(("ref.", "rm.")) for k in calls), calls
    h = summary["history"]
    assert all(math.isfinite(v) for x in h for v in x.values() if isinstance(v, float))
    assert h[-1]["objective/kl"] != 0.0


# --- 2 processes ---------------------------------------------------------------------------------------------
def test_two_process_grpo_matches_one_process(colour, tmp_path):
    """Groups stay whole on one process and each is sampled from its own seed (seed_per_prompt), so a
    2-process run (DDP) sees the same samples, advantages and global-batch losses as a 1-process run."""
    import json

    import yaml

    from tests.conftest import torchrun

    recipe = {"stage": "grpo", "init_from": str(colour["policy"]),
              "data": {"data_path": str(colour["data"]["prompts"])},
              "train": {"max_steps": 2, "learning_rate": 3e-3, "save_steps": 0, "report_to": [],
                        "lr_scheduler_type": "constant", "warmup_ratio": 0.0},
              "grpo": {"reward_fn": "word_fraction", "reward_kwargs": {"words": COLOURS}, "seed_per_prompt": True,
                       "rollout_batch_size": 4, "num_generations": 4, "mini_batch_size": 16, "epochs": 2,
                       "max_new_tokens": 8}}
    path = tmp_path / "grpo.yaml"
    path.write_text(yaml.safe_dump(recipe))
    one = run_grpo(load_run_config(path, [f"train.output_dir={tmp_path / 'one'}"]))
    out = tmp_path / "two"
    torchrun("-m", "mova.cli", "train", "grpo", "--config", path, f"train.output_dir={out}")
    two = json.loads((out / "summary.json").read_text())
    assert two["world_size"] == 2
    assert one["history"][-1]["objective/kl"] > 1e-3, one["history"]  # the policy moved
    for key in ("objective/reward", "objective/kl", "loss/policy", "loss/kl", "policy/clipfrac", "group/reward_std"):
        got = [h[key] for h in two["history"]]
        want = [h[key] for h in one["history"]]
        assert got == pytest.approx(want, rel=1e-3, abs=1e-5), key


def test_train_grpo_help_lists_the_options(capsys):
    from mova.cli import main
    from mova.trainers.grpo_config import GrpoConfig as Cfg

    with pytest.raises(SystemExit):
        main(["train", "grpo", "--help"])
    out = capsys.readouterr().out
    import dataclasses

    for f in dataclasses.fields(Cfg):
        assert f"grpo.{f.name} (" in out, f.name
    assert "leave-one-out" in out and "ppo.kl_coef" not in out
