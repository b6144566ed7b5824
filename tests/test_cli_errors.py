"""What a user meets on bad paths and inputs at the command line: one line naming the path or option, exit 2.

Each case runs ``mova ...`` (or an ``eval/*.py`` script) the way a user would, from a folder other than the
repository, and reads what it printed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mova.cli import main
from mova.evaluation.suite import format_comparison
from tests.llava_fixtures import tiny_recipe, write_llava_dataset

ROOT = Path(__file__).resolve().parents[1]


def _run(capsys, *argv: str) -> tuple[int, str]:
    rc = main(list(argv))
    return rc, capsys.readouterr().err


def test_recipe_default_init_from_missing_names_the_path_and_the_stage_that_writes_it(tmp_path, monkeypatch,
                                                                                       capsys):
    monkeypatch.chdir(tmp_path)  # not the repository: the recipe's runs/tiny-align/final is not here
    rc, err = _run(capsys, "train", "sft", "--config", str(ROOT / "train/configs/tiny_sft.yaml"),
                   "data.data_path=x.json")
    assert rc == 2
    assert "init_from: no model folder at 'runs/tiny-align/final'" in err
    assert "mova train align --config" in err and "tiny_align.yaml" in err
    assert "Repo id" not in err


@pytest.mark.parametrize("argv", [
    ["train", "dpo", "--config", str(ROOT / "train/configs/tiny_dpo.yaml")],
    ["eval", "vqa", "--model", "runs/none/final", "--data", "DATA"],
    ["eval", "safety", "--model", "runs/none/final", "--data", "DATA", "--out-dir", "out"],
    ["cache-features", "--checkpoint", "runs/none/final", "--data", "DATA", "--out", "cache"],
])
def test_missing_model_folders_are_named(tmp_path, monkeypatch, capsys, argv):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "DATA").mkdir()
    (tmp_path / "DATA.json").write_text("[]")
    argv = [a if a != "DATA" else str(tmp_path / ("DATA" if "safety" in argv else "DATA.json")) for a in argv]
    rc, err = _run(capsys, *argv)
    assert rc == 2 and "no model folder at 'runs/" in err and "Repo id" not in err, err


def test_eval_scripts_give_the_same_clean_error(tmp_path):
    (tmp_path / "d.json").write_text("[]")
    proc = subprocess.run([sys.executable, str(ROOT / "eval/vqa.py"), "--model", "runs/none/final", "--data",
                           str(tmp_path / "d.json")], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2 and "--model: no model folder at 'runs/none/final'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_folder_without_a_model_and_a_hub_id_offline_are_explained(tmp_path, monkeypatch):
    from mova.errors import ConfigError
    from mova.model.checkpoints import resolve_checkpoint

    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no config.json"):
        resolve_checkpoint(tmp_path / "empty", "init_from")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ConfigError, match="not in the local cache while downloads are off"):
        resolve_checkpoint("someone/some-model", "init_from")


def test_align_reports_a_text_record_with_a_stray_image_placeholder(tmp_path):
    """align leaves text-only records out (nothing trains on them there), but one whose text still has an
    <image> is a broken record, reported as sft reports it rather than dropped silently."""
    import yaml

    from mova.config import load_run_config
    from mova.data.llava import BadRecordError
    from mova.trainers.stages import run_stage

    data = write_llava_dataset(tmp_path, n=4, text_only=2)
    records = json.loads(data.read_text())
    records[-1]["conversations"][0]["value"] = "<image>\n" + records[-1]["conversations"][0]["value"]
    data.write_text(json.dumps(records))
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(data, tmp_path, max_steps=1, save_steps=0,
                                               output_dir=str(tmp_path / "run"))))
    with pytest.raises(BadRecordError, match=r"record 5 \(id 'txt-1'\): 1 <image> placeholder\(s\) but 0 image"):
        run_stage(load_run_config(path))
    summary = run_stage(load_run_config(path, ["data.skip_bad_records=true"]))
    assert summary["data"]["skipped_by_reason"] == {"placeholders and images differ": 1}
    assert summary["data"]["text_only_left_out"] == 1


def test_resume_and_feature_cache_are_logged(tmp_path, capfd):
    """A run says when it resumes and when it reads a feature cache (INFO lines on stderr)."""
    import yaml

    data = write_llava_dataset(tmp_path, n=4, text_only=0)
    cache = tmp_path / "cache"
    recipe = tiny_recipe(data, tmp_path, max_steps=1, save_steps=1, output_dir=str(tmp_path / "run"))
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    model = tmp_path / "model.yaml"
    model.write_text(yaml.safe_dump({"model": recipe["model"]}))
    assert main(["cache-features", "--config", str(model), "--data", str(data), "--out", str(cache),
                 "--no-progress"]) == 0
    capfd.readouterr()
    assert main(["train", "align", "--config", str(path), f"data.feature_cache={cache}"]) == 0
    assert "[mova] feature cache" in capfd.readouterr().err
    assert main(["train", "align", "--config", str(path), "train.max_steps=2", f"data.feature_cache={cache}",
                 "train.resume_from_checkpoint=latest"]) == 0
    assert f"[mova] resuming from {tmp_path / 'run' / 'checkpoint-1'}" in capfd.readouterr().err


def test_comparison_table_formats_every_score_alike():
    table = format_comparison({"a": {"tasks": {"vqa": {"metrics": {"accuracy": 1.0, "n": 40}}}},
                               "b": {"tasks": {"vqa": {"metrics": {"accuracy": 0.0, "n": 40}}}}})
    assert "| vqa/accuracy | 1.0000 | 0.0000 |" in table and "| vqa/n | 40 | 40 |" in table
