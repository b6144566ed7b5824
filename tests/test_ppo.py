"""PPO end to end on tiny models: reward rises under a rule reward, presets, references, resume,
VLM rollouts with images encoded once, and a 2-process ZeRO-2 run against a 1-process run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from mova.config import load_run_config
from mova.data.colour_task import COLOURS, OTHERS, write_colour_task
from mova.errors import ConfigError
from mova.rl import rewards
from mova.trainers.colour_policy import make_colour_policy
from mova.trainers.ppo import CollapseDetector, PpoTrainer, run_ppo
from mova.trainers.ppo_config import PRESETS, PpoConfig
from tests.conftest import torchrun

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def colour(tmp_path_factory):
    root = tmp_path_factory.mktemp("ppo_colour")
    data = write_colour_task(root / "data", n_prompts=32)
    return {"data": data, "policy": make_colour_policy(root / "policy", data, steps=60)}


def _overrides(colour, out, *extra):
    return [f"init_from={colour['policy']}", f"data.data_path={colour['data']['prompts']}", f"train.output_dir={out}",
            "train.learning_rate=1e-3", "train.report_to=[]", "train.save_steps=0", "ppo.reward_fn=word_fraction",
            f"ppo.reward_kwargs={{words: {COLOURS}}}", "ppo.rollout_batch_size=16", "ppo.mini_batch_size=8",
            "ppo.max_new_tokens=12", *extra]


def _mean(history, key, sl):
    values = [h[key] for h in history[sl]]
    return sum(values) / len(values)


def test_ppo_max_raises_the_reward_with_a_bounded_kl(colour, tmp_path):
    summary = run_ppo(load_run_config(None, _overrides(colour, tmp_path / "run", "ppo.preset=ppo_max",
                                                       "train.max_steps=24"), stage="ppo"))
    h = summary["history"]
    assert len(h) == 24
    first, last = _mean(h, "objective/reward", slice(0, 3)), _mean(h, "objective/reward", slice(-5, None))
    assert last > first + 0.25, (first, last)
    assert max(x["objective/kl"] for x in h) < 10.0
    # the critic pre-training iterations leave the policy where it was: no KL yet
    assert h[0]["critic_pretraining"] == 1.0 and h[1]["critic_pretraining"] == 1.0
    assert h[1]["objective/kl"] == pytest.approx(0.0, abs=1e-6)
    assert {"policy/approxkl", "policy/clipfrac", "loss/policy", "loss/value", "objective/entropy",
            "objective/ppl", "response_length", "time/generate", "time/score", "time/train"} <= set(h[-1])
    assert (tmp_path / "run" / "ppo_curves.png").is_file()
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(summary["final_model"])  # the final policy loads


def test_a_larger_kl_coefficient_keeps_the_policy_closer(colour, tmp_path):
    """The token-level KL penalty does its job: same run, stronger penalty, smaller KL."""
    common = ("ppo.preset=vanilla", "ppo.ppo_epochs=2", "train.max_steps=8")
    free = run_ppo(load_run_config(None, _overrides(colour, tmp_path / "a", *common, "ppo.kl_coef=0.0"), stage="ppo"))
    tied = run_ppo(load_run_config(None, _overrides(colour, tmp_path / "b", *common, "ppo.kl_coef=1.0"), stage="ppo"))
    kl_free = _mean(free["history"], "objective/kl", slice(-4, None))
    kl_tied = _mean(tied["history"], "objective/kl", slice(-4, None))
    assert kl_tied < 0.6 * kl_free, (kl_tied, kl_free)


def test_presets_fill_only_what_the_recipe_leaves_unset():
    cfg = PpoConfig(preset="ppo_max", reward_fn="word_fraction", kl_coef=0.2)
    assert cfg.kl_coef == 0.2  # the recipe wins
    assert cfg.score_norm == PRESETS["ppo_max"]["score_norm"] and cfg.cliprange_value == 0.2
    plain = PpoConfig(preset="vanilla")
    assert plain.kl_coef == 0.0 and plain.cliprange_value is None and plain.whiten_advantages is False
    with pytest.raises(ConfigError, match="unknown preset"):
        PpoConfig(preset="ppo_min")
    with pytest.raises(ConfigError, match="multiple"):
        PpoConfig(rollout_batch_size=10, mini_batch_size=4)


def test_collapse_detector_warns_on_runaway_kl_length_and_perplexity():
    det = CollapseDetector(max_kl=5.0, ratio=2.0)
    assert det.observe(1, {"objective/kl": 0.1, "objective/ppl": 8.0, "response_length": 10.0}) == []
    assert det.observe(2, {"objective/kl": 1.0, "objective/ppl": 5.0, "response_length": 15.0}) == []
    found = det.observe(3, {"objective/kl": 6.0, "objective/ppl": 3.0, "response_length": 25.0})
    assert len(found) == 3 and len(det.warnings) == 3
    # still out of band: no repeat; back in and out again: a new warning
    assert det.observe(4, {"objective/kl": 7.0, "objective/ppl": 3.0, "response_length": 25.0}) == []
    det.observe(5, {"objective/kl": 1.0, "objective/ppl": 8.0, "response_length": 10.0})
    assert len(det.observe(6, {"objective/kl": 9.0, "objective/ppl": 8.0, "response_length": 10.0})) == 1


def test_reward_registry_checks_what_functions_return():
    assert rewards.score("word_fraction", ["q"] * 2, ["red cat", "dog"], words=["red"]) == [0.5, 0.0]
    assert rewards.score("contains_answer", ["q"] * 2, ["it is 42.", "it is 421"], answer=[42, 42]) == [1.0, 0.0]
    with pytest.raises(ConfigError, match="unknown reward function"):
        rewards.get_reward("no_such_reward")

    @rewards.register_reward("test_bad_length")
    def bad(prompts, completions, **columns):
        return [1.0]

    with pytest.raises(ConfigError, match="returned 1 values for 2"):
        rewards.score("test_bad_length", ["a", "b"], ["a", "b"])


def test_resume_continues_exactly_where_the_run_stopped(colour, tmp_path):
    # a constant rate: the cut run stops at max_steps=2, and a schedule's shape depends on the run's length
    # (resuming a scheduled run is tested below with a run that stops mid-way)
    base = ("ppo.preset=ppo_max", "ppo.critic_pretrain_iterations=1", "train.save_steps=2",
            "train.lr_scheduler_type=constant", "train.warmup_ratio=0")
    full = run_ppo(load_run_config(None, _overrides(colour, tmp_path / "full", *base, "train.max_steps=4"),
                                   stage="ppo"))
    run_ppo(load_run_config(None, _overrides(colour, tmp_path / "cut", *base, "train.max_steps=2"), stage="ppo"))
    resumed = run_ppo(load_run_config(None, _overrides(colour, tmp_path / "cut", *base, "train.max_steps=4",
                                                       "train.resume_from_checkpoint=latest"), stage="ppo"))
    assert [h["iteration"] for h in resumed["history"]] == [1, 2, 3, 4]
    for key in ("objective/reward", "loss/policy", "loss/value", "objective/kl"):
        got = [h.get(key, 0.0) for h in resumed["history"]]
        want = [h.get(key, 0.0) for h in full["history"]]
        assert got == pytest.approx(want, abs=1e-5), key
    assert "loss/policy" not in full["history"][0] and "loss/policy" in full["history"][3]


def test_lora_adapters_off_reference_is_the_start_policy(colour, tmp_path):
    from transformers import AutoModelForCausalLM

    from mova.rl.ppo_math import token_logprobs
    from mova.rl.rollout import forward_response, generate_rollouts

    cfg = load_run_config(None, _overrides(colour, tmp_path / "lora", "ppo.preset=vanilla", "ppo.critic=shared",
                                           "ppo.reference=adapters_off", "train.lora.r=4", "train.lora.alpha=8",
                                           "train.learning_rate=5e-3", "train.max_steps=3"), stage="ppo")
    trainer = PpoTrainer(cfg)
    summary = trainer.train()
    assert summary["last_metrics"]["objective/kl"] != 0.0  # the adapters moved
    batch = generate_rollouts(trainer.policy, trainer.processor, trainer.records[:4], template=None,
                              max_new_tokens=6, device=trainer.device)
    start = AutoModelForCausalLM.from_pretrained(colour["policy"]).eval()
    with torch.no_grad():
        want = token_logprobs(forward_response(start, batch)[0], batch.response_ids)
        got = trainer._reference_logprobs(batch)
        moved = token_logprobs(forward_response(trainer.policy, batch)[0], batch.response_ids)
    mask = batch.response_mask.bool()
    torch.testing.assert_close(got[mask], want[mask], atol=1e-5, rtol=0)
    assert (moved[mask] - want[mask]).abs().max() > 1e-3
    with pytest.raises(ConfigError, match="adapters_off needs LoRA"):
        PpoTrainer(load_run_config(None, _overrides(colour, tmp_path / "x", "ppo.reference=adapters_off"), stage="ppo"))
    # ZeRO-3 is no longer refused: tests/test_rl_options.py trains under it on 2 processes


# --- VLM ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vlm_setup(tmp_path_factory):
    from mova.data.spavl_mini import write_spavl_mini
    from mova.model.builder import build_model
    from mova.rl.reward_model import RewardModel
    from tests.conftest import tiny_model_config

    root = tmp_path_factory.mktemp("ppo_vlm")
    data = write_spavl_mini(root / "spavl", n_train=8, n_validation=4, n_test_per_split=4, seed=0)
    torch.manual_seed(0)
    model, processor = build_model(tiny_model_config(), load_weights=False)
    model.save_pretrained(root / "init")
    processor.save_pretrained(root / "init")
    torch.manual_seed(1)
    rm = RewardModel.from_backbone(model)
    torch.nn.init.normal_(rm.score_head.weight, std=0.5)
    rm.save_pretrained(root / "rm", processor=processor)
    return {"data": data, "init": root / "init", "rm": root / "rm"}


def test_vlm_ppo_encodes_each_image_once_per_iteration(vlm_setup, tmp_path):
    cfg = load_run_config(None, [f"init_from={vlm_setup['init']}", f"data.data_path={vlm_setup['data']}",
                                 f"train.output_dir={tmp_path / 'vlm'}", "train.report_to=[]", "train.save_steps=0",
                                 "train.max_steps=2", "train.learning_rate=1e-3", f"ppo.reward_model={vlm_setup['rm']}",
                                 "ppo.preset=ppo_max", "ppo.critic_pretrain_iterations=0", "ppo.rollout_batch_size=4",
                                 "ppo.mini_batch_size=2", "ppo.max_new_tokens=6"], stage="ppo")
    trainer = PpoTrainer(cfg)
    calls = {}

    def count(name):
        def hook(module, args, output):
            calls[name] = calls.get(name, 0) + args[0].shape[0]
        return hook

    experts = trainer.policy.experts
    pixel_experts = [n for n, e in experts.items() if e.input_kind == "pixels"]
    for name in pixel_experts:
        experts[name].register_forward_hook(count(name))
        trainer.reference.experts[name].register_forward_hook(count(f"ref.{name}"))
        trainer.critic_engine.module.backbone.experts[name].register_forward_hook(count(f"critic.{name}"))
        trainer.reward_model.backbone.experts[name].register_forward_hook(count(f"rm.{name}"))
    summary = trainer.train()
    # 2 iterations x 4 prompts, each with one image: each pixel expert ran 8 times, all in the policy
    assert {n: calls.get(n, 0) for n in pixel_experts} == {n: 8 for n in pixel_experts}
    assert not any(k.startswith(("ref.", "critic.", "rm.")) for k in calls), calls
    last = summary["last_metrics"]
    assert all(torch.isfinite(torch.tensor(v)) for k, v in last.items() if isinstance(v, float))
    from mova.model.builder import load_pretrained

    load_pretrained(summary["final_model"])


# --- 2 processes ---------------------------------------------------------------------------------------------
def test_two_process_zero2_ppo_matches_one_process(colour, tmp_path):
    recipe = {"stage": "ppo", "init_from": str(colour["policy"]), "data": {"data_path": str(colour["data"]["prompts"])},
              "train": {"max_steps": 3, "learning_rate": 3e-3, "save_steps": 0, "report_to": []},
              "ppo": {"preset": "ppo_max", "critic_pretrain_iterations": 0, "reward_fn": "word_fraction",
                      "reward_kwargs": {"words": COLOURS + OTHERS[:6]}, "score_norm": "none",
                      "rollout_batch_size": 8, "mini_batch_size": 8,
                      "ppo_epochs": 2, "max_new_tokens": 8, "temperature": 0.0}}
    path = tmp_path / "ppo.yaml"
    path.write_text(yaml.safe_dump(recipe))
    one = run_ppo(load_run_config(path, [f"train.output_dir={tmp_path / 'one'}"]))
    out = tmp_path / "two"
    torchrun("-m", "mova.cli", "train", "ppo", "--config", path, f"train.output_dir={out}",
             f"train.deepspeed={ROOT / 'scripts' / 'zero2.json'}")
    two = json.loads((out / "summary.json").read_text())
    assert two["world_size"] == 2
    # the policy moved: the comparison is not of zeros
    assert one["history"][-1]["objective/kl"] > 1e-3, one["history"]
    for key in ("objective/reward", "objective/kl", "loss/policy", "loss/value", "policy/clipfrac"):
        got = [h[key] for h in two["history"]]
        want = [h[key] for h in one["history"]]
        assert got == pytest.approx(want, rel=1e-3, abs=1e-5), key


def test_ptx_loss_is_the_language_model_loss_on_the_pretraining_texts(colour, tmp_path):
    import json as _json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    texts = ["the red cat sat on a blue house", "two small dogs", "a green tree and a white star"]
    ptx = tmp_path / "ptx.jsonl"
    ptx.write_text("".join(_json.dumps({"text": t}) + "\n" for t in texts))
    cfg = load_run_config(None, _overrides(colour, tmp_path / "ptx", "ppo.preset=ppo_max", "ppo.ptx_coef=0.5",
                                           f"ppo.ptx_data={ptx}", "ppo.ptx_batch_size=2",
                                           "ppo.critic_pretrain_iterations=0", "train.max_steps=2"), stage="ppo")
    trainer = PpoTrainer(cfg)
    with torch.no_grad():
        got = float(trainer._ptx_loss(1))  # step 1: texts 2 and 0
    model = AutoModelForCausalLM.from_pretrained(colour["policy"]).eval()
    tok = AutoTokenizer.from_pretrained(colour["policy"])
    losses, counts = [], []
    for t in (texts[2], texts[0]):  # one at a time: no padding to get wrong
        ids = tok(t, return_tensors="pt").input_ids
        with torch.no_grad():
            losses.append(float(model(input_ids=ids, labels=ids).loss) * (ids.shape[1] - 1))
        counts.append(ids.shape[1] - 1)
    assert got == pytest.approx(sum(losses) / sum(counts), abs=1e-4)
    summary = trainer.train()
    assert all("loss/ptx" in h for h in summary["history"])
    with pytest.raises(ConfigError, match="ptx_data"):
        PpoTrainer(load_run_config(None, _overrides(colour, tmp_path / "x", "ppo.ptx_coef=0.5"), stage="ppo"))


def test_ptx_takes_llava_records_with_images(vlm_setup, tmp_path):
    """PPO-ptx on LLaVA-format records: the loss is the policy's LM loss on the assistant turns of the next
    instruction batch (images through its experts), and it joins every PPO step."""
    from mova.trainers.instruction_mix import InstructionMix
    from tests.llava_fixtures import write_llava_dataset

    sft = write_llava_dataset(tmp_path / "sft", n=4, text_only=2)
    cfg = load_run_config(None, [f"init_from={vlm_setup['init']}", f"data.data_path={vlm_setup['data']}",
                                 f"train.output_dir={tmp_path / 'vlm'}", "train.report_to=[]", "train.save_steps=0",
                                 "train.max_steps=2", "train.learning_rate=1e-3", f"ppo.reward_model={vlm_setup['rm']}",
                                 "ppo.preset=ppo_max", "ppo.critic_pretrain_iterations=0", "ppo.rollout_batch_size=4",
                                 "ppo.mini_batch_size=2", "ppo.max_new_tokens=6", "ppo.ptx_coef=0.5",
                                 f"ppo.ptx_data={sft}", "ppo.ptx_batch_size=3"], stage="ppo")
    trainer = PpoTrainer(cfg)
    assert isinstance(trainer.ptx, InstructionMix)
    twin = InstructionMix(sft, trainer.policy, trainer.processor, trainer.policy.config.template, batch_size=3,
                          seed=cfg.train.seed)
    with torch.no_grad():
        got = float(trainer._ptx_loss(0))
        want = float(trainer.policy(**twin.next_batch()).loss)
    assert got == pytest.approx(want, rel=1e-5)
    summary = trainer.train()
    assert all(h["loss/ptx"] > 0 for h in summary["history"])
