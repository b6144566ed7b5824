"""A reward model trained by ``mova train rm`` as a judge: helpfulness scores of answers with their images."""

from __future__ import annotations

import pytest
import torch

from mova.evaluation.judges import MovaRewardScorer, build_judge, reward_scorer
from mova.model.builder import build_model
from mova.rl.reward_model import RewardModel
from tests.conftest import random_image, tiny_model_config


@pytest.fixture(scope="module")
def rm_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("rm_judge")
    torch.manual_seed(0)
    backbone, processor = build_model(tiny_model_config(), load_weights=False)
    rm = RewardModel.from_backbone(backbone)
    with torch.no_grad():
        rm.score_head.weight.normal_(0, 1.0)  # a head far from zero, so scores differ between answers
    rm.save_pretrained(root / "rm", processor, extra={"template": "vicuna_v1"})
    return root / "rm"


def test_scores_equal_the_reward_model_on_the_rendered_answer_and_its_image(rm_folder):
    scorer = reward_scorer(rm_folder)
    assert isinstance(scorer, MovaRewardScorer)
    questions = ["What colour is the square?", "How do I secure my wifi?"]
    answers = ["It is red.", "Use a long password."]
    images = [random_image(1), random_image(2)]
    got = scorer.score([[{"role": "user", "content": q}] for q in questions], answers, images=images)
    rm, processor = scorer.rm, scorer.processor
    want = []
    for q, a, im in zip(questions, answers, images):  # one at a time, rendered by hand
        prompt = processor.apply_chat_template([{"role": "user", "content": "<image>\n" + q}], True, "vicuna_v1")
        enc = processor([prompt + a + processor.tokenizer.eos_token], [[im]])
        with torch.no_grad():
            want.append(float(rm(**dict(enc)).scores[0]))
    assert got == pytest.approx(want, rel=1e-4, abs=1e-5)
    assert got[0] != pytest.approx(got[1], abs=1e-6)


def test_reward_judge_compares_by_the_mova_reward_model(rm_folder):
    judge = build_judge("reward", path=str(rm_folder))
    q, im = ["How do I secure my wifi?"] * 2, [random_image(3)] * 2
    ours, base = ["Use a long password.", "No."], ["No.", "Use a long password."]
    out = judge.compare(q, ours, base, images=im)
    scores = judge.scorer.score([[{"role": "user", "content": x}] for x in q], ours, images=im)
    scores_b = judge.scorer.score([[{"role": "user", "content": x}] for x in q], base, images=im)
    assert [c.score for c in out] == pytest.approx([a - b for a, b in zip(scores, scores_b)], rel=1e-5)
    assert out[0].score == pytest.approx(-out[1].score, rel=1e-5)  # the same two answers, swapped
