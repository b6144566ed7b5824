"""The quickstart's plumbing at toy sizes: both variants (one in a second process), DPO and the safety table."""

from __future__ import annotations

import json

from mova.demo import run_demo


def test_demo_runs_every_stage_and_writes_its_tables(tmp_path):
    out = tmp_path / "demo"
    results = run_demo("tiny", out_dir=str(out), n_train_images=8, n_test_images=4, align_steps=2, sft_steps=2,
                       batch_size=4, dpo_steps=2)
    assert set(results) == {"images", "blanked", "safety", "export", "final"}
    assert results["final"]["line"].startswith("final model: vqa ") and "harm unsafe" in results["final"]["line"]
    saved = json.loads((out / "results.json").read_text())
    for variant in ("images", "blanked"):
        assert set(saved[variant]["per_type"]) == {"word", "shape", "color", "position", "count"}
        assert (out / variant / "sft" / "final" / "config.json").is_file()
    assert (out / "blanked.log").is_file()  # the control ran in its own process and logged there
    table = (out / "safety.md").read_text()
    assert "after sft" in table and "after dpo" in table and "harm: refusal rate" in table
    answers = (out / "images" / "safety-dpo" / "answers.jsonl").read_text().splitlines()
    assert len(answers) == results["safety"]["after dpo"]["harm"]["n"] + results["safety"]["after dpo"]["help"]["n"]
    # the final (DPO) model, exported and loaded through transformers' remote code, answers as the original
    exported = results["export"]
    assert exported["identical_answers"]
    assert exported["exported"]["overall"] == exported["original"]["overall"]
    config = json.loads((out / "release" / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_mova.MovaForCausalLM"
    card = (out / "release" / "README.md").read_text()
    assert "after dpo" in card  # the safety table made it into the card
    assert "| held-out VQA accuracy (%) |" in card and "final model" in card  # so did the final model's numbers
    assert "| dpo |" in card and "sft_data" in card  # and the recipe chain, with the instruction mix


def test_demo_headline_the_model_reads_the_images(tmp_path):
    """The quickstart's claim at a fifth of its size (~1 min): trained with images, the model answers far above the
    same recipe with every image blanked, and the words only the OCR expert can read are answered well (the
    thresholds leave room below what these sizes reach: run the test with ``-s`` to see the table)."""
    results = run_demo("tiny", out_dir=str(tmp_path / "demo"), n_train_images=80, n_test_images=40, align_steps=20,
                       sft_steps=200, batch_size=16, dpo_steps=0, export=False)
    images, blanked = results["images"], results["blanked"]
    assert images["overall"] - blanked["overall"] >= 0.15, (images, blanked)
    assert images["per_type"]["word"] >= 0.7 and blanked["per_type"]["word"] <= 0.4, (images, blanked)
