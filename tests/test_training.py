"""Training stages: exact resume, fault-tolerant checkpoints, non-finite losses, LoRA, multi-process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

import mova.trainers.base as trainer_base
from mova.config import load_run_config
from mova.model.builder import load_pretrained
from mova.trainers.base import NonFiniteLossError
from mova.trainers.stages import run_stage
from tests.conftest import torchrun
from tests.llava_fixtures import tiny_recipe, write_llava_dataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    data = write_llava_dataset(root, n=20, text_only=4)
    cfg = tiny_recipe(data, root, max_steps=6, save_steps=2)
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _losses(summary):
    return [summary["losses"][k] for k in sorted(summary["losses"], key=int)]


class SimulatedKill(BaseException):
    pass


def test_resume_after_a_kill_mid_save_matches_an_uninterrupted_run(recipe, tmp_path, monkeypatch):
    full = run_stage(load_run_config(recipe, [f"train.output_dir={tmp_path / 'full'}"]))
    assert full["global_step"] == 6

    real_publish = trainer_base._publish

    def dies_at_step_4(src, dst):
        if dst.endswith("checkpoint-4"):
            raise SimulatedKill  # the process dies after writing checkpoint-4, before it becomes visible
        real_publish(src, dst)

    out = tmp_path / "killed"
    monkeypatch.setattr(trainer_base, "_publish", dies_at_step_4)
    with pytest.raises(SimulatedKill):
        run_stage(load_run_config(recipe, [f"train.output_dir={out}"]))
    monkeypatch.setattr(trainer_base, "_publish", real_publish)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    assert (out / ".staging" / "checkpoint-4").is_dir()  # the half-published one stays invisible

    resumed = run_stage(load_run_config(recipe, [f"train.output_dir={out}", "train.resume_from_checkpoint=latest"]))
    assert resumed["global_step"] == 6
    torch.testing.assert_close(torch.tensor(_losses(resumed)), torch.tensor(_losses(full)), rtol=0, atol=1e-6)
    assert not (out / ".staging").exists()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]  # keep last 2
    assert (out / "loss_curve.png").is_file() and (out / "summary.json").is_file()


def test_nonfinite_loss_skips_the_step_and_stops_after_too_many(recipe, tmp_path, monkeypatch):
    from mova.model.fusion import MLPFusion

    calls = {"n": 0}
    real = MLPFusion.pixel_tokens

    def sometimes_nan(self, features):
        calls["n"] += 1
        out = real(self, features)
        return [o * float("nan") for o in out] if calls["n"] in POISON else out

    monkeypatch.setattr(MLPFusion, "pixel_tokens", sometimes_nan)
    POISON = {2}
    summary = run_stage(load_run_config(recipe, [f"train.output_dir={tmp_path / 'a'}", "train.save_steps=0"]))
    assert summary["nonfinite_steps_skipped"] == 1
    assert all(torch.isfinite(torch.tensor(_losses(summary))))
    POISON = set(range(1, 100))  # noqa: F841 (read by the closure)
    calls["n"] = 0
    with pytest.raises(NonFiniteLossError, match="3 non-finite losses in a row"):
        run_stage(load_run_config(recipe, [f"train.output_dir={tmp_path / 'b'}", "train.save_steps=0",
                                           "train.max_nonfinite_in_a_row=3"]))


def test_sft_with_lora_merges_into_a_plain_checkpoint(recipe, tmp_path):
    align = run_stage(load_run_config(recipe, [f"train.output_dir={tmp_path / 'align'}", "train.save_steps=0"]))
    before, _ = load_pretrained(align["final_model"])
    sft = run_stage(load_run_config(recipe, [
        "stage=sft", f"init_from={align['final_model']}", f"train.output_dir={tmp_path / 'sft'}",
        "train.save_steps=0", "train.lora.r=4", "train.unfreeze_experts=[clip]"]))
    assert sft["trainable_params"]["experts"] > 0
    after, _ = load_pretrained(sft["final_model"])
    keys = after.state_dict().keys()
    assert not any("lora" in k for k in keys)
    q = "language_model.model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(before.state_dict()[q], after.state_dict()[q])  # merged LoRA changed the LLM
    k = next(k for k in keys if k.startswith("experts.clip.") and k.endswith("weight"))
    assert not torch.equal(before.state_dict()[k], after.state_dict()[k])  # the unfrozen expert trained


def _torchrun(recipe, out, extra):
    torchrun("-m", "mova.cli", "train", "align", "--config", recipe, f"train.output_dir={out}", *extra)
    return json.loads((out / "summary.json").read_text())


def test_two_process_zero2_matches_one_process_with_the_same_global_batch(recipe, tmp_path):
    one = run_stage(load_run_config(recipe, [f"train.output_dir={tmp_path / 'one'}", "train.save_steps=0"]))
    two = _torchrun(recipe, tmp_path / "two", ["train.per_device_train_batch_size=2", "train.save_steps=0",
                                               f"train.deepspeed={ROOT / 'scripts' / 'zero2.json'}"])
    assert len(_losses(two)) == len(_losses(one)) == 6
    torch.testing.assert_close(torch.tensor(_losses(two)), torch.tensor(_losses(one)), rtol=1e-4, atol=1e-6)


def test_zero3_saves_a_consolidated_model_that_loads_and_matches(recipe, tmp_path):
    one = run_stage(load_run_config(recipe, [f"train.output_dir={tmp_path / 'one'}", "train.save_steps=0"]))
    three = _torchrun(recipe, tmp_path / "z3", ["train.per_device_train_batch_size=2", "train.save_steps=0",
                                                f"train.deepspeed={ROOT / 'scripts' / 'zero3.json'}"])
    ref, processor = load_pretrained(one["final_model"])
    z3, _ = load_pretrained(three["final_model"])
    from tests.conftest import random_image

    batch = processor(["<image> what color?"], [random_image(0)])
    with torch.no_grad():
        torch.testing.assert_close(z3(**batch).logits, ref(**batch).logits, rtol=0, atol=1e-4)
