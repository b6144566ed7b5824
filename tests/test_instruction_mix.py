"""Instruction data mixed into preference training: batches, their loss, and DPO's objective with them."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from mova.config import load_run_config
from mova.data.batch import to_device
from mova.model.builder import build_model
from mova.trainers.dpo import run_dpo
from mova.trainers.instruction_mix import InstructionMix, is_conversation_file
from tests.conftest import tiny_model_config
from tests.llava_fixtures import write_llava_dataset


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from mova.data.spavl_mini import write_spavl_mini

    root = tmp_path_factory.mktemp("mix")
    sft = write_llava_dataset(root / "sft", n=6, text_only=2)
    records = json.loads(sft.read_text())
    for i, r in enumerate(records):  # distinct answers, so that every record's tokens differ
        r["conversations"][1]["value"] += f" Record {i}."
    sft.write_text(json.dumps(records))
    pairs = write_spavl_mini(root / "spavl", n_train=8, n_validation=4, n_test_per_split=4, seed=0)
    torch.manual_seed(0)
    model, processor = build_model(tiny_model_config(), load_weights=False)
    model.save_pretrained(root / "init")
    processor.save_pretrained(root / "init")
    return {"root": root, "sft": sft, "pairs": pairs, "model": model, "processor": processor}


def test_batches_cover_every_record_each_epoch_and_resume_in_order(setup):
    mix = InstructionMix(setup["sft"], setup["model"], setup["processor"], "vicuna_v1", batch_size=4, seed=3)
    assert len(mix) == 8 and is_conversation_file(setup["sft"])
    batches = [mix.next_batch() for _ in range(2)]  # 2 x 4 = one epoch
    seen = [[tuple(r[m == 1].tolist()) for r, m in zip(b["input_ids"], b["attention_mask"])] for b in batches]
    # every record once per epoch: the two batches hold 8 distinct rows
    assert len({row for batch in seen for row in batch}) == 8
    state = mix.state_dict()
    after = [mix.next_batch()["input_ids"].tolist() for _ in range(3)]
    again = InstructionMix(setup["sft"], setup["model"], setup["processor"], "vicuna_v1", batch_size=4, seed=3)
    again.load_state_dict(json.loads(json.dumps(state)))  # through JSON, as in a checkpoint
    assert [again.next_batch()["input_ids"].tolist() for _ in range(3)] == after


def test_loss_is_the_models_language_modelling_loss_on_the_batch(setup):
    model = setup["model"].eval()
    mix = InstructionMix(setup["sft"], model, setup["processor"], "vicuna_v1", batch_size=3, seed=0)
    twin = InstructionMix(setup["sft"], model, setup["processor"], "vicuna_v1", batch_size=3, seed=0)
    batch = to_device(twin.next_batch(), "cpu")
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        shift = logits[:, :-1].flatten(0, 1)
        target = batch["labels"][:, 1:].flatten()
        want = torch.nn.functional.cross_entropy(shift, target, ignore_index=-100)
        got = mix.loss(model, "cpu")
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


def _recipe(setup, tmp_path, weight: float, steps: int = 2, save_steps: int = 0) -> dict:
    recipe = {"stage": "dpo", "init_from": str(setup["root"] / "init"), "data": {"data_path": str(setup["pairs"])},
              "train": {"max_steps": steps, "per_device_train_batch_size": 4, "learning_rate": 1e-3,
                        "save_steps": save_steps, "logging_steps": 1, "report_to": [], "warmup_ratio": 0.0,
                        "output_dir": str(tmp_path / f"run-{weight}")},
              "dpo": {"beta": 0.2, "train_fusion": True, "sft_data": str(setup["sft"]), "sft_weight": weight,
                      "sft_batch_size": 3}}
    path = tmp_path / f"dpo-{weight}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_dpo_adds_the_weighted_instruction_loss_to_every_step(setup, tmp_path):
    """Same seed, same first batch: the first logged loss with weight w is the plain one plus w times the logged
    instruction NLL (the step before any update sees the same weights either way)."""
    runs = {w: run_dpo(load_run_config(_recipe(setup, tmp_path, w))) for w in (0.0, 2.0)}
    first = {w: json.loads((tmp_path / f"run-{w}" / "summary.json").read_text()) for w in runs}
    loss = {w: first[w]["losses"][min(first[w]["losses"], key=int)] for w in runs}
    nll = runs[2.0]["first_metrics"]["nll/instruction"]
    assert nll > 0 and "nll/instruction" not in runs[0.0]["first_metrics"]
    assert loss[2.0] == pytest.approx(loss[0.0] + 2.0 * nll, rel=1e-4)


def test_the_instruction_stream_position_is_saved_in_checkpoints(setup, tmp_path):
    run_dpo(load_run_config(_recipe(setup, tmp_path, 1.0, steps=3, save_steps=2)))
    state = json.loads((tmp_path / "run-1.0" / "checkpoint-2" / "mova_extra_state.json").read_text())
    assert state["instruction_mix"]["served"] == 2  # one instruction batch per step
