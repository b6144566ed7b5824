"""`mova train rm` end to end: a text RM and a VLM RM learn, strength columns equal direct scoring over the M
models, flipping/margin/contrastive/LM-loss/MetaRM paths run, and 2-process ZeRO-2 matches 1 process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from mova.config import load_run_config
from mova.data.synthetic_prefs import write_synthetic_prefs
from mova.rl.reward_model import RewardModel, load_reward_model, score_texts
from mova.trainers.rm import run_rm
from tests.conftest import save_tiny_text_lm, tiny_model_config, torchrun

ROOT = Path(__file__).resolve().parents[1]


def _losses(summary):
    return [summary["losses"][k] for k in sorted(summary["losses"], key=int)]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("rm_synth")
    save_tiny_text_lm(root / "lm", seed=0)
    train, test = write_synthetic_prefs(root / "data", n_train=96, n_test=64, seed=0)
    return root, train, test


def _run(root: Path, train: Path, out: Path, *overrides: str) -> dict:
    cfg = load_run_config(None, [f"init_from={root / 'lm'}", f"data.data_path={train}", f"train.output_dir={out}",
                                 "train.per_device_train_batch_size=16", "train.learning_rate=3e-3",
                                 "train.save_steps=0", "train.logging_steps=1", "train.report_to=[]",
                                 "train.warmup_ratio=0.0", "data.template=raw", *overrides], stage="rm")
    return run_rm(cfg)


def _accuracy(rm, tok, path: Path) -> float:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    prompts = [r["prompt"] for r in rows]
    c = score_texts(rm, tok, prompts, [r["chosen"] for r in rows], batch_size=32)
    r = score_texts(rm, tok, prompts, [r["rejected"] for r in rows], batch_size=32)
    return sum(a > b for a, b in zip(c, r)) / len(rows)


def test_text_rm_reaches_high_held_out_accuracy_on_separable_prefs(synth, tmp_path):
    root, train, test = synth
    tok = AutoTokenizer.from_pretrained(root / "lm")
    torch.manual_seed(0)
    untrained = RewardModel.from_backbone(AutoModelForCausalLM.from_pretrained(root / "lm"))
    before = _accuracy(untrained, tok, test)
    summary = _run(root, train, tmp_path / "run", "train.max_steps=32", f"data.eval_data_path={test}")
    assert summary["eval"]["accuracy"] >= 0.95 > before + 0.2
    metrics = {"rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected"}
    assert metrics <= set(summary["last_metrics"])
    assert summary["last_loss"] < summary["first_loss"]
    rm, tok2 = load_reward_model(summary["final_model"])  # the saved model scores the same pairs the same way
    assert _accuracy(rm, tok2, test) == pytest.approx(summary["eval"]["accuracy"])


def test_strength_columns_equal_direct_scoring_and_drive_flip_margin_and_aux_losses(synth, tmp_path):
    from mova.trainers.rm_strength import compute_strength

    root, train, _ = synth
    cfg = load_run_config(None, [f"init_from={root / 'lm'}", f"data.data_path={train}", "data.limit=16",
                                 "train.max_steps=2", "train.per_device_train_batch_size=8", "train.save_steps=0",
                                 "train.report_to=[]", "train.learning_rate=3e-3", "data.template=raw"], stage="rm")
    res = compute_strength(cfg, 2, tmp_path / "strength")
    rows = [json.loads(line) for line in Path(train).read_text().splitlines()][:16]
    diffs = []
    for model in res["models"]:  # each pair scored alone by each saved model
        rm, tok = load_reward_model(model["final_model"])
        prompts = [r["prompt"] for r in rows]
        c = score_texts(rm, tok, prompts, [r["chosen"] for r in rows])
        r = score_texts(rm, tok, prompts, [r["rejected"] for r in rows])
        diffs.append([a - b for a, b in zip(c, r)])
    assert res["models"][0]["seed"] != res["models"][1]["seed"] and diffs[0] != diffs[1]
    out = [json.loads(line) for line in Path(res["strength_path"]).read_text().splitlines()]
    for i, row in enumerate(out):
        mean = (diffs[0][i] + diffs[1][i]) / 2
        std = abs(diffs[0][i] - diffs[1][i]) / 2  # population std of two values
        assert row["strength_mean"] == pytest.approx(mean, abs=1e-4)
        assert row["strength_std"] == pytest.approx(std, abs=1e-4)
    annotated = [json.loads(line) for line in Path(res["annotated_data"]).read_text().splitlines()]
    assert annotated[3]["strength_mean"] == pytest.approx(out[3]["strength_mean"])
    # The annotated file's columns drive flipping (exactly the weakest 25%), the margin and soft labels;
    # SwAV and the LM loss run alongside.
    summary = _run(root, Path(res["annotated_data"]), tmp_path / "flip", "train.max_steps=2", "data.limit=16",
                   "rm.flip_fraction=0.25", "rm.margin_scale=1.0", "rm.loss=soft_negative", "rm.label_smoothing=0.2",
                   "rm.contrastive=swav", "rm.swav_prototypes=4", "rm.lm_loss_weight=0.5")
    assert summary["flipped_pairs"] == 4
    assert {"loss/swav", "nll/chosen", "loss/preference"} <= set(summary["last_metrics"])
    summary = _run(root, train, tmp_path / "simcse", "train.max_steps=1", "data.limit=16", "rm.contrastive=simcse",
                   f"rm.strength_path={res['strength_path']}", "rm.flip_fraction=0.5")
    assert summary["flipped_pairs"] == 8 and "loss/simcse" in summary["last_metrics"]


def test_metarm_training_path_with_policy_samples(synth, tmp_path):
    from mova.trainers.metarm import sample_meta_set

    root, train, _ = synth
    tok = AutoTokenizer.from_pretrained(root / "lm")
    policy = AutoModelForCausalLM.from_pretrained(root / "lm")
    rows = [json.loads(line) for line in Path(train).read_text().splitlines()][:4]
    meta = sample_meta_set(policy, tok, [[{"from": "human", "value": r["prompt"]}] for r in rows],
                           tmp_path / "meta.jsonl", k=2, max_new_tokens=5)
    summary = _run(root, train, tmp_path / "meta", "train.max_steps=2", "data.limit=16", f"rm.metarm_path={meta}",
                   "rm.metarm_lr=0.05", "rm.metarm_batch_size=4")
    m = summary["last_metrics"]
    assert m["meta/difference_loss_after_ascent"] > m["meta/difference_loss"]


def _vlm_metrics_before(init: Path, data: Path, cfg) -> dict:
    """The untrained reward model's held-out metrics (same data and layout as the run's evaluation)."""
    from mova.data.pairs import pair_collator
    from mova.data.preference import load_pair_source
    from mova.model.builder import load_pretrained
    from mova.trainers.rm import build_pair_dataset, preference_metrics, score_pair_dataset

    model, processor = load_pretrained(str(init))
    torch.manual_seed(0)
    rm = RewardModel.from_backbone(model)
    pairs = load_pair_source(str(data), spavl_config="validation")
    ds = build_pair_dataset(cfg, processor, pairs, model.config.template)
    r_c, r_r = score_pair_dataset(rm, ds, pair_collator("shared", processor.tokenizer.pad_token_id), progress=False)
    return preference_metrics(r_c, r_r)


def test_vlm_rm_on_the_mini_spavl(tmp_path):
    from mova.data.spavl_mini import write_spavl_mini
    from mova.model.builder import build_model

    data = write_spavl_mini(tmp_path / "spavl", n_train=24, n_validation=16, n_test_per_split=2, seed=0)
    torch.manual_seed(0)
    model, processor = build_model(tiny_model_config(), load_weights=False)
    model.save_pretrained(tmp_path / "init")
    processor.save_pretrained(tmp_path / "init")
    cfg = load_run_config(None, [f"init_from={tmp_path / 'init'}", f"data.data_path={data}",
                                 f"train.output_dir={tmp_path / 'run'}", "train.max_steps=12",
                                 "train.per_device_train_batch_size=8", "train.learning_rate=3e-3",
                                 "train.save_steps=0", "train.logging_steps=1", "train.report_to=[]",
                                 "train.warmup_ratio=0.0", f"data.eval_data_path={data}", "rm.train_fusion=true"],
                          stage="rm")
    summary = run_rm(cfg)
    assert summary["data"]["pairs"] == 24 and summary["eval"]["pairs"] == 16
    # The untrained model's random head already prefers most chosen answers here (0.875: the mini set's
    # chosen and rejected answers differ in style); training must keep the accuracy and widen the margin.
    before = _vlm_metrics_before(tmp_path / "init", data, cfg)
    assert summary["eval"]["accuracy"] >= max(before["accuracy"], 0.9)
    assert summary["eval"]["margin"] > before["margin"] + 1.0
    assert summary["last_loss"] < summary["first_loss"]
    rm, processor = load_reward_model(summary["final_model"])
    assert rm.kind.name == "mova" and rm.score_head.in_features == model.config.text_config.hidden_size


def test_two_process_zero2_rm_matches_one_process(synth, tmp_path):
    root, train, _ = synth
    recipe = {"stage": "rm", "init_from": str(root / "lm"),
              "data": {"data_path": str(train), "template": "raw", "limit": 48},
              "train": {"max_steps": 3, "per_device_train_batch_size": 8, "learning_rate": 3e-3, "save_steps": 0,
                        "logging_steps": 1, "report_to": [], "warmup_ratio": 0.0}}
    path = tmp_path / "rm.yaml"
    path.write_text(yaml.safe_dump(recipe))
    one = run_rm(load_run_config(path, [f"train.output_dir={tmp_path / 'one'}"]))
    out = tmp_path / "two"
    torchrun("-m", "mova.cli", "train", "rm", "--config", path, f"train.output_dir={out}",
             "train.per_device_train_batch_size=4", f"train.deepspeed={ROOT / 'scripts' / 'zero2.json'}")
    two = json.loads((out / "summary.json").read_text())
    assert len(_losses(two)) == len(_losses(one)) == 3
    torch.testing.assert_close(torch.tensor(_losses(two)), torch.tensor(_losses(one)), rtol=1e-4, atol=1e-6)
    assert two["last_metrics"]["rewards/accuracies"] == pytest.approx(one["last_metrics"]["rewards/accuracies"])
    assert (out / "final" / "score_head.safetensors").is_file()


def test_tied_embeddings_checkpoint_and_resume_like_an_uninterrupted_run(tmp_path):
    """SmolLM2 ties its input embeddings to its LM head; the reward model's checkpoints must still save (one
    copy of the shared tensor) and a resumed run must continue exactly as the uninterrupted one."""
    root = tmp_path
    save_tiny_text_lm(root / "lm", seed=1, tied=True)
    train, _ = write_synthetic_prefs(root / "data", n_train=64, n_test=8, seed=1)
    common = ("train.max_steps=4", "train.save_steps=2", "train.per_device_train_batch_size=8")
    whole = _run(root, train, tmp_path / "whole", *common)
    assert (tmp_path / "whole" / "checkpoint-2").is_dir()
    part = tmp_path / "part"
    _run(root, train, part, *common)
    import shutil
    shutil.rmtree(part / "checkpoint-4")
    resumed = _run(root, train, part, *common, "train.resume_from_checkpoint=latest")
    assert _losses(resumed)[-1] == pytest.approx(_losses(whole)[-1], rel=1e-4)
    rm, _ = load_reward_model(whole["final_model"])
    backbone = rm.backbone
    assert backbone.get_input_embeddings().weight.data_ptr() == backbone.get_output_embeddings().weight.data_ptr()
