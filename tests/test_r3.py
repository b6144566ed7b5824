"""R3 on the PPO and GRPO trainers: start states as prompts, schedule updates, resume, and the k = 0 baseline."""

from __future__ import annotations

import pytest

from mova.config import load_run_config
from mova.data.arith_mini import write_arith_mini
from mova.errors import ConfigError
from mova.model.tiny import tiny_text_lm
from mova.trainers.r3 import R3Trainer, run_r3


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("r3")
    tiny_text_lm(root / "lm", seed=0)
    return {"lm": root / "lm", "data": write_arith_mini(root / "arith", n_train=12, n_test=4, seed=0)}


def _cfg(setup, out, *extra):
    return load_run_config(None, [f"init_from={setup['lm']}", f"data.data_path={setup['data']}",
                                  f"train.output_dir={out}", "train.report_to=[]", "train.save_steps=0",
                                  "train.max_steps=2", "ppo.preset=ppo_max", "ppo.critic_pretrain_iterations=0",
                                  "ppo.rollout_batch_size=4", "ppo.mini_batch_size=4", "ppo.max_new_tokens=6",
                                  *extra], stage="r3")


def test_r3_prompts_are_start_states_and_the_schedule_sees_the_reward(setup, tmp_path):
    trainer = R3Trainer(_cfg(setup, tmp_path / "mixed", "curriculum.schedule=mixed", "ppo.reward_fn=gsm8k_cot"))
    pool = trainer.schedule.current_pool()
    assert {s.k for s in pool} == set(range(max(s.num_steps for s in pool)))  # every k is in the mixed pool
    records = trainer.prompt_batch(0)
    assert all(r.text is not None and r.text.startswith("Question:") for r in records)
    states = {(s.record_id, s.k): s for s in pool}
    for r in records:
        rid, k = r.id.rsplit("/k", 1)
        assert r.text == states[(rid, int(k))].prompt and r.columns["answer"] == states[(rid, int(k))].answer
    from mova.rl.rollout import generate_rollouts

    batch = generate_rollouts(trainer.policy, trainer.processor, records, template=None, max_new_tokens=4,
                              device=trainer.device)
    assert batch.prompts == [r.text for r in records]  # verbatim: no chat template around a start state
    summary = trainer.train()
    last = summary["last_metrics"]
    assert {"curriculum/stage", "curriculum/pool_size", "curriculum/mean_k", "curriculum/advanced"} <= set(last)
    assert last["curriculum/mean_k"] > 0


def test_schedule_none_is_plain_ppo_and_staged_resumes_its_stage(setup, tmp_path):
    plain = R3Trainer(_cfg(setup, tmp_path / "plain", "curriculum.schedule=none"))
    assert {s.k for s in plain.schedule.current_pool()} == {0}
    staged = ("curriculum.schedule=staged", "curriculum.threshold=-1.0", "train.save_steps=1")
    first = run_r3(_cfg(setup, tmp_path / "staged", *staged))
    assert first["stage"] == "r3"
    stages = [h["curriculum/stage"] for h in first["history"]]
    assert stages == sorted(stages) and stages[-1] > stages[0]  # threshold -1: advances every update
    resumed = R3Trainer(_cfg(setup, tmp_path / "staged", *staged, "train.max_steps=3",
                             "train.resume_from_checkpoint=latest"))
    resumed.load_checkpoint(tmp_path / "staged" / "checkpoint-2")
    assert resumed.schedule.metrics()["curriculum/stage"] == first["history"][-1]["curriculum/stage"]


def test_r3_on_grpo_answers_each_start_state_as_a_group(setup, tmp_path):
    from mova.trainers.r3 import R3GrpoTrainer, r3_trainer

    cfg = load_run_config(None, [f"init_from={setup['lm']}", f"data.data_path={setup['data']}",
                                 f"train.output_dir={tmp_path / 'grpo'}", "train.report_to=[]", "train.save_steps=0",
                                 "train.max_steps=2", "curriculum.optimizer=grpo", "grpo.rollout_batch_size=2",
                                 "grpo.num_generations=3", "grpo.mini_batch_size=6", "grpo.max_new_tokens=6"],
                          stage="r3")
    trainer = r3_trainer(cfg)
    assert isinstance(trainer, R3GrpoTrainer) and trainer.critic_engine is None
    assert trainer.ppo.reward_fn == "gsm8k_cot"  # the kind's default reward, as on PPO
    batch, _ = trainer.make_experience(trainer.prompt_batch(0))
    assert len(batch) == 6 and batch.prompts[0] == batch.prompts[2] != batch.prompts[3]
    summary = run_r3(cfg)
    assert summary["stage"] == "r3" and "curriculum/mean_k" in summary["last_metrics"]
    with pytest.raises(ConfigError, match="grpo: section"):
        r3_trainer(load_run_config(None, ["curriculum.optimizer=grpo", "ppo.kl_coef=0.1",
                                          f"init_from={setup['lm']}", f"data.data_path={setup['data']}"], stage="r3"))
