"""`mova train dpo` end to end: reference modes agree, a VLM aligns on the mini SPA-VL, 2-process ZeRO-2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from mova.config import load_run_config
from mova.model.builder import build_model, load_pretrained
from mova.trainers.dpo import run_dpo
from tests.conftest import save_tiny_text_lm, tiny_model_config, torchrun

ROOT = Path(__file__).resolve().parents[1]


def _losses(summary):
    return [summary["losses"][k] for k in sorted(summary["losses"], key=int)]


@pytest.fixture(scope="module")
def text_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dpo_text")
    save_tiny_text_lm(root / "lm", seed=0)
    rows = [{"prompt": f"Question {i}: is {w} safe to do?\n", "chosen": f"Yes, {w} is fine.",
             "rejected": f"I will not talk about {w}."}
            for i, w in enumerate(["cooking", "running", "reading", "painting", "swimming", "singing", "hiking",
                                   "sewing"])]
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _text_run(root: Path, out: Path, *overrides: str) -> dict:
    cfg = load_run_config(None, [f"init_from={root / 'lm'}", f"data.data_path={root / 'pairs.jsonl'}",
                                 f"train.output_dir={out}", "train.max_steps=4", "train.per_device_train_batch_size=4",
                                 "train.learning_rate=5e-3", "train.save_steps=0", "train.logging_steps=1",
                                 "train.report_to=[]", "dpo.beta=0.5", *overrides], stage="dpo")
    return run_dpo(cfg)


def test_reference_modes_give_the_same_losses(text_setup, tmp_path):
    copy = _text_run(text_setup, tmp_path / "copy", "dpo.reference=copy")
    pre = _text_run(text_setup, tmp_path / "pre", "dpo.reference=precomputed")
    assert len(_losses(copy)) == 4
    torch.testing.assert_close(torch.tensor(_losses(pre)), torch.tensor(_losses(copy)), rtol=0, atol=1e-5)
    assert _losses(copy)[0] == pytest.approx(0.6931, abs=1e-3)  # policy == reference at step 0: log 2
    assert _losses(copy)[-1] < _losses(copy)[0]  # DPO moves the policy towards the chosen answers
    assert copy["last_metrics"]["rewards/margins"] > 0
    lora = ["train.lora.r=4", "train.lora.merge=false"]
    off = _text_run(text_setup, tmp_path / "off", "dpo.reference=adapters_off", *lora)
    lcopy = _text_run(text_setup, tmp_path / "lcopy", "dpo.reference=copy", *lora)
    torch.testing.assert_close(torch.tensor(_losses(off)), torch.tensor(_losses(lcopy)), rtol=0, atol=1e-5)


def test_adapters_off_needs_lora(text_setup, tmp_path):
    with pytest.raises(Exception, match="adapters_off needs LoRA"):
        _text_run(text_setup, tmp_path / "x", "dpo.reference=adapters_off")


@pytest.fixture(scope="module")
def vlm_recipe(tmp_path_factory):
    from mova.data.spavl_mini import write_spavl_mini

    root = tmp_path_factory.mktemp("dpo_vlm")
    data = write_spavl_mini(root / "spavl", n_train=16, n_validation=8, n_test_per_split=8, seed=0)
    torch.manual_seed(0)
    model, processor = build_model(tiny_model_config(), load_weights=False)
    model.save_pretrained(root / "init")
    processor.save_pretrained(root / "init")
    recipe = {"stage": "dpo", "init_from": str(root / "init"), "data": {"data_path": str(data)},
              "train": {"max_steps": 3, "per_device_train_batch_size": 4, "learning_rate": 1e-3, "save_steps": 0,
                        "logging_steps": 1, "report_to": [], "warmup_ratio": 0.0},
              "dpo": {"beta": 0.2, "train_fusion": True}}
    path = root / "dpo.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_vlm_dpo_on_the_mini_spavl_saves_a_loadable_model(vlm_recipe, tmp_path):
    summary = run_dpo(load_run_config(vlm_recipe, [f"train.output_dir={tmp_path / 'run'}"]))
    assert summary["global_step"] == 3 and summary["data"]["pairs"] == 16
    assert {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
            "logps/rejected"} <= set(summary["last_metrics"])
    model, processor = load_pretrained(summary["final_model"])
    init, _ = load_pretrained(str(Path(vlm_recipe).parent / "init"))
    key = next(k for k in model.state_dict() if k.startswith("fusion.") and k.endswith("weight"))
    assert not torch.equal(model.state_dict()[key], init.state_dict()[key])  # fusion trained (train_fusion)
    key = next(k for k in model.state_dict() if k.startswith("experts.clip.") and k.endswith("weight"))
    assert torch.equal(model.state_dict()[key], init.state_dict()[key])  # experts frozen


def test_two_process_zero2_dpo_matches_one_process(vlm_recipe, tmp_path):
    one = run_dpo(load_run_config(vlm_recipe, [f"train.output_dir={tmp_path / 'one'}"]))
    out = tmp_path / "two"
    torchrun("-m", "mova.cli", "train", "dpo", "--config", vlm_recipe, f"train.output_dir={out}",
             "train.per_device_train_batch_size=2", f"train.deepspeed={ROOT / 'scripts' / 'zero2.json'}")
    two = json.loads((out / "summary.json").read_text())
    assert len(_losses(two)) == len(_losses(one)) == 3
    # several Adam steps on 1 vs 2 processes: reduction order differs, so compare relatively
    torch.testing.assert_close(torch.tensor(_losses(two)), torch.tensor(_losses(one)), rtol=1e-4, atol=1e-6)
    margins = [h for h in (two["last_metrics"], one["last_metrics"])]
    assert margins[0]["rewards/margins"] == pytest.approx(margins[1]["rewards/margins"], rel=1e-3, abs=1e-5)
