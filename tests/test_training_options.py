"""Training options practitioners expect: any transformers ``TrainingArguments`` field from a recipe (checked
against transformers' own dataclass), per-part learning rates as optimizer groups, and data from a Hub-style
folder, mixtures, streaming and a held-out split -- on tiny runs from the command line."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mova.config import TrainConfig, load_run_config, to_dict, training_args_fields
from mova.data.sources import folder_files, mixture_counts, read_source
from mova.errors import ConfigError, DataError
from mova.trainers.stages import run_stage, training_arguments
from tests.llava_fixtures import tiny_recipe, write_hub_llava_folder, write_llava_dataset

ROOT = Path(__file__).resolve().parents[1]


# --- TrainingArguments pass-through ------------------------------------------------------------------------------
def test_every_training_arguments_field_is_settable_and_reaches_the_trainer():
    """Every init field of transformers' TrainingArguments is a ``train.`` key (apart from the few Mova sets),
    and a value set in a recipe is the value transformers' Trainer gets."""
    from transformers import TrainingArguments

    fields = training_args_fields()
    assert set(fields) == {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    cfg = load_run_config(ROOT / "train/configs/tiny_sft.yaml", [
        "train.optim=adamw_torch", "train.adam_beta2=0.95", "train.tf32=false", "train.eval_strategy=steps",
        "train.eval_steps=3", "train.torch_compile=false", "train.push_to_hub=false", "train.hub_model_id=me/tiny",
        "train.fsdp=[full_shard, auto_wrap]", "train.fsdp_config={min_num_params: 1000}", "train.warmup_steps=5",
        "train.lr_scheduler_kwargs={num_cycles: 2}", "train.lr_scheduler_type=cosine_with_restarts",
        "train.neftune_noise_alpha=5", "train.save_strategy=epoch", "train.gradient_checkpointing=true"])
    assert cfg.train.optim == "adamw_torch" and cfg.train.training_args["fsdp"] == "full_shard auto_wrap"
    args = training_arguments(cfg)
    assert args.optim.value == "adamw_torch" and args.adam_beta2 == 0.95 and args.eval_strategy.value == "steps"
    assert args.eval_steps == 3 and args.hub_model_id == "me/tiny" and args.neftune_noise_alpha == 5
    # the legacy string form becomes transformers' current one: fsdp on, the strategy in fsdp_config
    assert args.fsdp is True and args.fsdp_config["reshard_after_forward"] is True
    assert args.fsdp_config["min_num_params"] == 1000
    assert training_arguments(load_run_config(ROOT / "train/configs/tiny_sft.yaml", ["train.fsdp=true"])).fsdp is True
    assert args.warmup_steps == 5  # transformers' own field wins over Mova's warmup_ratio
    assert args.lr_scheduler_kwargs == {"num_cycles": 2} and args.save_strategy.value == "epoch"
    assert args.activation_checkpointing and not args.remove_unused_columns


@pytest.mark.parametrize("override,match", [
    ("train.optim=adamw_8bitt", r"train\.optim: 'adamw_8bitt' is not one of .*adamw_8bit"),
    ("train.optm=adamw_torch", r"train\.optm: unknown key.*did you mean optim"),
    ("train.eval_strategy=sometimes", r"train\.eval_strategy: 'sometimes' is not one of no, steps, epoch"),
    ("train.tf32=maybe", r"train\.tf32: expected true or false or null, got 'maybe'"),
    ("train.eval_steps=often", r"train\.eval_steps: expected a number or null, got 'often'"),
    ("train.remove_unused_columns=true", r"train\.remove_unused_columns: set by Mova"),
    ("train.fusion_learning_rate=-1", r"train\.fusion_learning_rate: must be >= 0"),
    ("train.fsdp=[full_shrd, auto_wrap]", r"train\.fsdp: 'full_shrd' is not an FSDP option; the options are "
                                          r"full_shard, shard_grad_op"),
])
def test_bad_keys_and_values_fail_at_load_naming_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_run_config(ROOT / "train/configs/tiny_sft.yaml", [override])


def test_fsdp_words_become_transformers_current_form_without_its_deprecation_warning(caplog):
    """``train.fsdp: full_shard offload`` reaches transformers as ``fsdp=True`` plus the ``fsdp_config`` entries
    transformers' own (deprecated) translation gives; the recipe's own entries win; FSDP1 setups are left to
    transformers, and an FSDP1-only strategy under FSDP2 is refused naming the key."""
    def args_for(*overrides):
        with caplog.at_level("WARNING"):
            return training_arguments(load_run_config(ROOT / "train/configs/tiny_sft.yaml", list(overrides)))

    args = args_for("train.fsdp=[shard_grad_op, offload, auto_wrap]")
    assert args.fsdp is True
    assert args.fsdp_config["reshard_after_forward"] is False and args.fsdp_config["cpu_offload"] is True
    assert "deprecated" not in caplog.text
    # transformers' own translation of the same words, as a reference
    from transformers import TrainingArguments

    with caplog.at_level("WARNING"):
        legacy = TrainingArguments(output_dir="x", fsdp="shard_grad_op offload auto_wrap", use_cpu=True)
    assert "deprecated" in caplog.text
    assert {k: legacy.fsdp_config[k] for k in ("reshard_after_forward", "cpu_offload")} == \
        {k: args.fsdp_config[k] for k in ("reshard_after_forward", "cpu_offload")}
    assert args_for("train.fsdp=full_shard", "train.fsdp_config={reshard_after_forward: false}") \
        .fsdp_config["reshard_after_forward"] is False
    assert args_for("train.fsdp=hybrid_shard", "train.fsdp_config={version: 1}").fsdp_config["version"] == 1
    assert not args_for("train.fsdp=").fsdp
    with pytest.raises(ConfigError, match=r"train\.fsdp: 'hybrid_shard' is an FSDP1 sharding strategy"):
        args_for("train.fsdp=hybrid_shard")


def test_values_transformers_refuses_name_the_key_they_came_from():
    """A combination only TrainingArguments' own checks refuse (load_best_model_at_end needs matching eval and
    save strategies) is reported with the recipe key at fault and transformers' reason."""
    cfg = load_run_config(ROOT / "train/configs/tiny_sft.yaml", ["train.load_best_model_at_end=true",
                                                                  "train.optim=adamw_torch"])
    with pytest.raises(ConfigError, match=r"train\.load_best_model_at_end=True: transformers' TrainingArguments "
                                          r"refused it: .*strateg"):
        training_arguments(cfg)


def test_a_reported_config_with_pass_through_keys_is_a_recipe_again(tmp_path):
    cfg = load_run_config(ROOT / "train/configs/tiny_sft.yaml", ["train.optim=adamw_torch_fused",
                                                                  "train.eval_strategy=steps",
                                                                  "train.fusion_learning_rate=1e-4"])
    data = to_dict(cfg)
    assert data["train"]["optim"] == "adamw_torch_fused" and "training_args" not in data["train"]
    path = tmp_path / "again.yaml"
    path.write_text(yaml.safe_dump(data))
    again = load_run_config(path)
    assert to_dict(again) == data and again.train.eval_strategy == "steps"
    # a TrainConfig built in Python (demo, continual learning) copies with its pass-through fields
    copy = dataclasses.replace(again.train, learning_rate=1.0)
    assert copy.optim == "adamw_torch_fused" and copy.learning_rate == 1.0
    with pytest.raises(AttributeError):
        TrainConfig().optim  # noqa: B018  (not set: not an attribute, as for any dataclass)


# --- a tiny run from the command line -----------------------------------------------------------------------------
def test_cli_sft_with_optimizer_eval_during_training_fusion_rate_and_a_hub_folder(tmp_path):
    """The issue's finish line: ``train.optim=adamw_torch_fused``, ``train.eval_strategy=steps``,
    ``train.fusion_learning_rate`` and a Hub-style dataset folder (parquet, images embedded) from the CLI."""
    folder = write_hub_llava_folder(tmp_path / "hub", n=12, eval_n=4)
    recipe = tiny_recipe(folder, folder, stage="sft", max_steps=4)
    recipe["data"] = {"data_path": str(folder), "eval_split": "validation"}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "run"
    env = {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "mova.cli", "train", "sft", "--config", str(path),
                           f"train.output_dir={out}", "train.optim=adamw_torch_fused", "train.eval_strategy=steps",
                           "train.eval_steps=2", "train.fusion_learning_rate=1e-2", "train.llm_learning_rate=0"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["global_step"] == 4 and summary["data"]["used"] == 12
    assert sorted(map(int, summary["eval_losses"])) == [2, 4]  # evaluated on the validation split every 2 steps
    assert summary["eval"]["eval_loss"] == pytest.approx(summary["eval_losses"]["4"])
    assert summary["config"]["train"]["optim"] == "adamw_torch_fused"
    # the run's starting weights (same seed, same build), against the final ones: the LLM's rate was 0
    from transformers import set_seed

    from mova.model.builder import build_model, load_pretrained

    set_seed(0)
    start, _ = build_model(load_run_config(path).model, load_weights=True)
    final, _ = load_pretrained(out / "final")
    for (name, a), b in zip(start.language_model.named_parameters(), final.language_model.parameters()):
        assert torch.equal(a, b), name
    assert any(not torch.equal(a, b) for a, b in zip(start.fusion.parameters(), final.fusion.parameters()))


# --- per-part learning rates ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    root = tmp_path_factory.mktemp("opts_data")
    write_llava_dataset(root, n=16, text_only=0)
    return root


def _sft(llava, out, *overrides):
    recipe = tiny_recipe(llava / "data.json", llava, stage="sft", max_steps=3, save_steps=0)
    path = out.parent / f"{out.name}.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe))
    return load_run_config(path, [f"train.output_dir={out}", *overrides])


def test_parts_get_their_own_rate_and_decay_found_through_the_policy_interface(llava, tmp_path):
    """The groups are the policy's parts (not names): every fusion parameter in the fusion groups, every LLM one
    in the LLM groups; rates and decays as set; no decay on biases and norms."""
    from mova.model.builder import build_model
    from mova.trainers.base import MovaTrainer
    from mova.trainers.optim import part_options

    cfg = _sft(llava, tmp_path / "groups", "train.fusion_learning_rate=0.01", "train.llm_learning_rate=0",
               "train.weight_decay=0.1", "train.fusion_weight_decay=0.2")
    model, _ = build_model(cfg.model, load_weights=False)
    model.requires_grad_(True)
    for e in model.experts.values():
        e.requires_grad_(False)
    trainer = MovaTrainer(model=model, args=training_arguments(cfg), part_options=part_options(cfg.train))
    opt = trainer.create_optimizer()
    by_name = dict(zip(trainer.group_names, opt.param_groups))
    assert set(by_name) == {"fusion", "fusion/no_decay", "llm", "llm/no_decay"}
    ids = {k: {id(p) for p in g["params"]} for k, g in by_name.items()}
    assert ids["fusion"] | ids["fusion/no_decay"] == {id(p) for p in model.fusion.parameters()}
    assert ids["llm"] | ids["llm/no_decay"] == {id(p) for p in model.language_model.parameters()}
    assert (by_name["fusion"]["lr"], by_name["fusion"]["weight_decay"]) == (0.01, 0.2)
    assert (by_name["llm"]["lr"], by_name["llm"]["weight_decay"]) == (0.0, 0.1)
    assert by_name["fusion/no_decay"]["weight_decay"] == 0.0 and by_name["llm/no_decay"]["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[i] for i in ids["llm/no_decay"] | ids["fusion/no_decay"]}
    assert no_decay and all("bias" in n or "norm" in n for n in no_decay)


def test_a_plain_lm_has_only_an_llm_part_and_ppo_value_heads_keep_the_base_rate(tmp_path):
    from mova.model.policy import load_policy
    from mova.trainers.optim import parameter_groups, part_options
    from mova.trainers.ppo import PolicyWithValueHead
    from tests.conftest import save_tiny_text_lm

    save_tiny_text_lm(tmp_path / "lm")
    lm, _ = load_policy(str(tmp_path / "lm"))
    lm.fusion = torch.nn.Linear(2, 2)  # a layer merely *named* fusion is not the Mova part
    wrapped = PolicyWithValueHead(lm, 64)
    cfg = load_run_config(None, ["train.learning_rate=1e-3", "train.llm_learning_rate=1e-5",
                                 "train.fusion_learning_rate=0.5"])
    groups, names = parameter_groups(wrapped, 1e-3, 0.0, part_options(cfg.train))
    lr = {n: g["lr"] for n, g in zip(names, groups)}
    assert lr == {"llm": 1e-5, "llm/no_decay": 1e-5, "rest": 1e-3, "rest/no_decay": 1e-3}
    rest = {id(p) for n, g in zip(names, groups) if n.startswith("rest") for p in g["params"]}
    assert rest == {id(p) for p in wrapped.value_head.parameters()}


# --- FSDP where accelerate cannot apply it ------------------------------------------------------------------------
def test_fsdp_where_accelerate_cannot_apply_it_fails_before_the_model_loads(llava, tmp_path, monkeypatch):
    """accelerate applies FSDP only across processes on GPUs (or other accelerators): transformers refuses a lone
    process only after the model loaded, and accelerate trains CPU processes with plain DDP, each holding the
    whole model, without a word. Both stop at once naming ``train.fsdp``; every summary says how a run was
    really spread (``world_size``, ``sharding``)."""
    import mova.trainers.stages as stages

    def no_model(*args, **kwargs):
        raise AssertionError("the model loaded before the launch was checked")

    monkeypatch.setattr(stages, "build_model", no_model)
    with pytest.raises(ConfigError, match=r"train\.fsdp shards the model across processes, and this run is a "
                                          r"single one: launch it with torchrun"):
        run_stage(_sft(llava, tmp_path / "one", "train.fsdp=full_shard"))
    monkeypatch.undo()
    plain = run_stage(_sft(llava, tmp_path / "plain", "train.max_steps=1"))
    assert (plain["world_size"], plain["sharding"]) == (1, None)

    recipe = tmp_path / "one.yaml"  # written by _sft
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           port, "-m", "mova.cli", "train", "sft", "--config", str(recipe),
                           f"train.output_dir={tmp_path / 'two'}", "train.fsdp=full_shard"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert "train.fsdp: accelerate applies FSDP only across GPUs (or other accelerators); these 2 CPU processes " \
           "would train unsharded" in proc.stderr, proc.stderr[-3000:]
    assert "trainable parameters" not in proc.stderr  # stopped before the model loaded


# --- data sources ----------------------------------------------------------------------------------------------------
def test_hub_folders_are_read_by_the_hubs_rules(tmp_path):
    plain = write_hub_llava_folder(tmp_path / "plain", n=5, eval_n=3)
    assert [f.name for f in folder_files(plain, None, "train")] == ["train-00000-of-00001.parquet"]
    assert [f.name for f in folder_files(plain, None, "validation")] == ["validation-00000-of-00001.parquet"]
    carded = write_hub_llava_folder(tmp_path / "card", n=5, eval_n=3, card=True)
    assert [f.name for f in folder_files(carded, "colours", "validation")] == ["part-validation.parquet"]
    with pytest.raises(DataError, match=r"no config/split colours/test .*known: colours/train, colours/validation"):
        folder_files(carded, "colours", "test")
    src = read_source(str(carded), name="colours", split="train")
    assert len(src.records) == 5 and isinstance(src.records[0]["image"], bytes)
    paths = write_hub_llava_folder(tmp_path / "paths", n=4, eval_n=2, embedded=False)
    assert read_source(str(paths)).records[0]["image"] == "images/000.png"


def test_mixture_counts_follow_the_ratios_and_the_stopping_rule():
    # 100 and 30 records at 3:1: repeating nothing, the mixture can hold min(100 / 0.75, 30 / 0.25) = 120
    # records (90 + 30); using everything it needs max(133.3, 120) = 133 (100 + 33, the small source repeating)
    assert mixture_counts([100, 30], [3, 1]) == [90, 30]
    assert mixture_counts([100, 30], [3, 1], "all_exhausted") == [100, 33]
    assert mixture_counts([10, 10, 10], [1, 1, 2]) == [5, 5, 10]
    with pytest.raises(DataError, match="ratios must be > 0"):
        mixture_counts([1, 2], [1, 0])


def test_sft_on_a_mixture_with_a_held_out_share_and_confined_image_paths(llava, tmp_path):
    hub = write_hub_llava_folder(tmp_path / "hub", n=8, eval_n=2)
    recipe = tiny_recipe(llava / "data.json", llava, stage="sft", max_steps=2, save_steps=0)
    recipe["data"] = {"sources": [{"path": str(llava / "data.json"), "ratio": 1.0},
                                  {"path": str(hub), "ratio": 1.0}],
                      "eval_size": 0.25}
    path = tmp_path / "mix.yaml"
    path.write_text(yaml.safe_dump(recipe))
    summary = run_stage(load_run_config(path, [f"train.output_dir={tmp_path / 'run'}",
                                               "train.eval_strategy=steps", "train.eval_steps=1"]))
    # 16 and 8 records at 1:1 without repeating -> 8 + 8; a quarter held out
    assert summary["data"]["sources"] == {str(llava / "data.json"): {"records": 16, "used": 8},
                                          str(hub): {"records": 8, "used": 8}}
    assert summary["data"]["used"] == 12 and sorted(map(int, summary["eval_losses"])) == [1, 2]

    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "data.json").write_text(json.dumps([{"id": "x", "image": "../hub/../../etc/passwd", "conversations": [
        {"from": "human", "value": "<image>\nhi"}, {"from": "gpt", "value": "ho"}]}]))
    recipe["data"] = {"sources": [{"path": str(evil / "data.json")}, {"path": str(hub)}]}
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(Exception, match="escapes the image folder"):
        run_stage(load_run_config(path, [f"train.output_dir={tmp_path / 'evil_run'}"]))


def test_streaming_sft_checks_records_as_they_come(llava, tmp_path):
    hub = write_hub_llava_folder(tmp_path / "hub", n=8, eval_n=2)  # images embedded
    paths = write_hub_llava_folder(tmp_path / "paths", n=6, eval_n=2, embedded=False)  # images beside the data
    recipe = tiny_recipe(llava / "data.json", llava, stage="sft", max_steps=3, save_steps=0)
    recipe["data"] = {"sources": [{"path": str(hub), "ratio": 3.0}, {"path": str(paths), "ratio": 1.0}],
                      "streaming": True, "mix_stopping": "all_exhausted"}
    path = tmp_path / "stream.yaml"
    path.write_text(yaml.safe_dump(recipe))
    summary = run_stage(load_run_config(path, [f"train.output_dir={tmp_path / 'run'}"]))
    assert summary["global_step"] == 3 and summary["data"]["streamed"]
    assert summary["data"]["records_seen"] >= 3 * 4 and summary["first_loss"] > summary["last_loss"]
    with pytest.raises(ConfigError, match="data.streaming: a stream has no length"):
        run_stage(load_run_config(path, [f"train.output_dir={tmp_path / 'x'}", "train.max_steps=-1"]))


def test_eval_strategy_without_held_out_data_says_which_keys_give_it(llava, tmp_path):
    with pytest.raises(ConfigError, match=r"train\.eval_strategy=steps needs held-out data: set data\.eval_size"):
        run_stage(_sft(llava, tmp_path / "run", "train.eval_strategy=steps"))


def test_preference_pairs_from_a_hub_folder_and_a_mixture_with_eval_during_dpo(tmp_path):
    import datasets

    from mova.data.preference import load_pairs_with_eval
    from mova.trainers.dpo import run_dpo
    from tests.conftest import save_tiny_text_lm

    save_tiny_text_lm(tmp_path / "lm")
    words = ["cooking", "running", "reading", "painting", "swimming", "singing", "hiking", "sewing"]
    rows = {"prompt": [f"Is {w} safe?\n" for w in words], "chosen": [f"Yes, {w} is fine." for w in words],
            "rejected": [f"I will not talk about {w}." for w in words]}
    (tmp_path / "prefs" / "data").mkdir(parents=True)
    datasets.Dataset.from_dict(rows).to_parquet(str(tmp_path / "prefs" / "data" / "train-00000-of-00001.parquet"))
    (tmp_path / "more.jsonl").write_text("".join(json.dumps({"prompt": f"Q{i}?", "chosen": "fine", "rejected": "no"})
                                                 + "\n" for i in range(4)))
    cfg = load_run_config(None, [f"init_from={tmp_path / 'lm'}", f"train.output_dir={tmp_path / 'run'}",
                                 "data.template=raw", "train.max_steps=3", "train.per_device_train_batch_size=4",
                                 "train.learning_rate=5e-3", "train.save_steps=0", "train.logging_steps=1",
                                 "train.report_to=[]", "train.eval_strategy=steps", "train.eval_steps=1",
                                 "data.eval_size=2", "dpo.reference=precomputed",
                                 f"data.sources=[{{path: {tmp_path / 'prefs'}, ratio: 2}}, "
                                 f"{{path: {tmp_path / 'more.jsonl'}, ratio: 1}}]"], stage="dpo")
    train, held = load_pairs_with_eval(cfg.data, seed=0)
    assert len(train) + len(held) == 12 and len(held) == 2  # 8 + 4 at 2:1 uses every pair once
    summary = run_dpo(cfg)
    assert summary["global_step"] == 3 and sorted(map(int, summary["eval_losses"])) == [1, 2, 3]
    # the held-out pairs are scored with DPO's own loss and metrics, against their own precomputed reference
    assert {"eval_loss", "eval_rewards/margins", "eval_rewards/accuracies"} <= set(summary["eval"])
