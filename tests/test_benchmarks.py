"""Every benchmark's ``--quick`` run: exit code 0 and the table it exists to print, with the rows it should
have and finite numbers in them, so that a broken benchmark fails CI (the full runs stay on demand).

Each script runs in a subprocess from a temporary working directory with its outputs under ``tmp_path``,
never in the repository's ``runs/``. Also here: :mod:`mova.artifacts`, which decides when a benchmark may
reuse a checkpoint it built earlier.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def run_quick(script: str, *args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python benchmarks/<script> --quick ARGS`` from ``cwd``; fails with the output tails unless it exits 0."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(BENCH / script), "--quick", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"{script} --quick exited {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n"
                    f"--- stderr\n{proc.stderr[-6000:]}")
    return proc


def table(stdout: str, header_start: str) -> list[dict[str, str]]:
    """The markdown table whose header line starts with ``header_start``, as one dict per row."""
    lines = stdout.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(header_start)]
    assert starts, f"no table starting {header_start!r} in:\n{stdout[-3000:]}"
    i = starts[-1]
    head = [c.strip() for c in lines[i].strip().strip("|").split("|")]
    rows = []
    for line in lines[i + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert len(cells) == len(head), f"row {line!r} does not fit header {head}"
        rows.append(dict(zip(head, cells)))
    return rows


def number(cell: str) -> float:
    """The first number in a cell (``1,234.5``, ``1.20x``, ``92.8%``), checked finite."""
    m = re.search(r"-?[\d,]*\.?\d+(?:e[-+]?\d+)?", cell)
    assert m, f"no number in {cell!r}"
    value = float(m.group().replace(",", ""))
    assert math.isfinite(value), cell
    return value


def test_train_throughput_quick(tmp_path):
    out = run_quick("train_throughput.py", cwd=tmp_path).stdout
    rows = table(out, "| config | stage | batches |")
    assert [(r["stage"], r["batches"].split()[0], r["experts"].split()[0]) for r in rows] == [
        (stage, b, e) for stage in ("align", "sft") for e in ("live", "features") for b in ("padded", "packed")]
    assert all(number(r["samples/s"]) > 0 and number(r["tokens/s"]) > 0 for r in rows)
    assert all(0 <= number(r["pad %"]) < 100 for r in rows)


def test_dpo_quick(tmp_path):
    out = run_quick("dpo.py", "--out", str(tmp_path / "dpo"), cwd=tmp_path).stdout
    rows = table(out, "| comparison | variant | pairs/s |")
    assert [(r["comparison"], r["variant"]) for r in rows] == [
        ("text", "trl"), ("text", "mova"), ("vlm", "padded"), ("vlm", "shared"),
        ("reference", "live"), ("reference", "precomputed")]
    assert all(number(r["pairs/s"]) > 0 and number(r["speed-up"]) > 0 for r in rows)
    assert "scoring pass" in rows[-1]["note"]
    layouts = {r["layout"]: r for r in table(out, "| layout | rows x width")}
    assert list(layouts) == ["tree, rows of 512", "tree, rows of 1024", "tree, one row", "padded [chosen; rejected]"]
    slots = {k: number(r["rows x width (token slots)"].split("(")[1]) for k, r in layouts.items()}
    # the padded layout repeats each prompt and pads: more token slots than the tree in one row
    assert slots["padded [chosen; rejected]"] > slots["tree, one row"]
    assert all(number(r["s per forward + backward"]) > 0 for r in layouts.values())


def test_ppo_quick(tmp_path):
    out = run_quick("ppo.py", "--out", str(tmp_path / "ppo"), cwd=tmp_path).stdout
    rows = table(out, "| run | generate s |")
    assert [r["run"] for r in rows] == ["text 2x64 ppo_max separate", "text 2x64 ppo_max shared",
                                        "vlm tiny ppo_max separate"]
    for r in rows:
        parts = [number(r[k]) for k in ("generate s", "score s", "train s")]
        assert number(r["iteration s"]) == pytest.approx(sum(parts), abs=2e-3)
        assert number(r["samples/s"]) > 0
    curves = table(out, "| preset | reward (first)")
    assert [r["preset"] for r in curves] == ["ppo_max", "vanilla"]
    assert all(0 <= number(r["reward (last 10)"]) <= 1 for r in curves)
    assert (tmp_path / "ppo" / "ppo_max_vs_vanilla.png").is_file()


def test_r3_arith_quick_and_rerun_with_other_sizes_rebuilds(tmp_path):
    out_dir = tmp_path / "r3"
    proc = run_quick("r3_arith.py", "--out", str(out_dir), "--seeds", "0", "1", cwd=tmp_path)
    rows = table(proc.stdout, "| seed | SFT | PPO (k=0) | R3 (mixed) |")
    assert [r["seed"] for r in rows] == ["0", "1", "mean"]
    assert all(0 <= number(r[col]) <= 100 for r in rows for col in ("SFT", "PPO (k=0)", "R3 (mixed)"))
    assert json.loads((out_dir / "sft-0" / "build_args.json").read_text())["steps"] == 3

    # a rerun with other sizes rebuilds the SFT checkpoint instead of evaluating the stale one, and says why
    other = run_quick("r3_arith.py", "--out", str(out_dir), "--seeds", "0", "--sft-only", "--sft-steps", "4",
                      cwd=tmp_path)
    assert f"rebuilding {out_dir / 'sft-0'}: built with other arguments (steps: 3 -> 4)" in other.stderr
    assert json.loads((out_dir / "sft-0" / "build_args.json").read_text())["steps"] == 4
    sft_rows = table(other.stdout, "| seed | test accuracy |")
    assert len(sft_rows) == 1 and re.fullmatch(r"\d+ of 8", sft_rows[0]["outputs with a false line"])


def test_r3_arith_mean_row_is_the_mean_over_seeds():
    sys.path.insert(0, str(BENCH))
    try:
        from r3_arith import comparison_table
    finally:
        sys.path.remove(str(BENCH))
    rows = table(comparison_table([{"seed": 0, "sft": 0.36, "ppo": 0.35, "r3": 0.375},
                                   {"seed": 2, "sft": 0.305, "ppo": 0.28, "r3": 0.31},
                                   {"seed": 3, "sft": 0.2, "ppo": 0.19, "r3": 0.185}]), "| seed | SFT |")
    assert rows[-1] == {"seed": "mean", "SFT": "28.8%", "PPO (k=0)": "27.3%", "R3 (mixed)": "29.0%"}


def test_rm_noisy_quick(tmp_path):
    out = run_quick("rm_noisy.py", "--out-dir", str(tmp_path / "rm"), cwd=tmp_path).stdout
    rows = table(out, "| method | 20% flipped |")
    assert [r["method"] for r in rows] == ["bt", "label_smoothing", "margin", "flip", "flip+margin",
                                           "soft_label+margin", "simcse", "swav"]
    assert all(0 <= number(r["20% flipped"]) <= 1 for r in rows)
    found = table(out, "| flipped | flipped pairs the ensemble")
    assert [r["flipped"] for r in found] == ["20%"]
    assert re.fullmatch(r"\d+-\d+ of \d+", found[0]["flipped pairs the ensemble put below zero"])


def test_experts_ablation_quick(tmp_path):
    out = run_quick("experts_ablation.py", "--out-dir", str(tmp_path / "ablation"), cwd=tmp_path).stdout
    rows = table(out, "| run | shape | color |")
    assert [r["run"] for r in rows] == ["ocr", "clip+sam"]
    assert all(0 <= number(r["overall"]) <= 100 for r in rows)
    # OCR words take 0-16 positions; clip+sam's row-shared SAM block takes fewer positions than tokens
    assert rows[0]["positions/image"] == "0-16"
    assert number(rows[1]["positions/image"]) < number(rows[1]["visual tokens/image"])
    assert (tmp_path / "ablation" / "ablation.md").is_file()


def test_ocr_quick(tmp_path):
    out = run_quick("ocr.py", cwd=tmp_path).stdout
    rows = table(out, "| det_limit_side_len |")
    assert [r["det_limit_side_len"] for r in rows] == ["736", "160"]
    for r in rows:
        assert number(r["ms per image (mean)"]) > 0
        read, total = (int(x) for x in r["words read"].split(" of "))
        assert total > 0 and read == total  # the demo's rendered words are read at either size


def test_generation_quick(tmp_path):
    out = run_quick("generation.py", cwd=tmp_path).stdout
    rows = table(out, "| batch size | seconds |")
    assert [r["batch size"] for r in rows] == ["1", "4"]
    assert all(number(r["tokens/s"]) > 0 for r in rows)
    checks = {r["dtype"]: r for r in table(out, "| dtype | max abs step-logit")}
    assert list(checks) == ["fp32", "bf16"]
    assert number(checks["fp32"]["max abs step-logit difference (greedy)"]) < 1e-4
    assert checks["fp32"]["greedy answers identical"] == "4 of 4"
    assert checks["fp32"]["seeded sampled answers identical"] == "4 of 4"


def test_smol_generation_quick(tmp_path):
    """The real SmolLM2 (fetched once per environment): batched greedy answers equal one-at-a-time ones."""
    out = run_quick("smol_generation.py", cwd=tmp_path).stdout
    rows = table(out, "| batch size | tokens |")
    assert [r["batch size"] for r in rows] == ["1", "4"]
    assert all(number(r["tokens/s"]) > 0 for r in rows)
    assert all(r["answers equal to batch 1"] == "4/4" for r in rows)


def test_smol_polish_quick(tmp_path):
    out = run_quick("smol_polish.py", cwd=tmp_path).stdout
    assert table(out, "| steps | largest number |")
    rows = {r[""]: r for r in table(out, "| | generated")}
    for key in ("accuracy, no polishing (%)", "accuracy, Self-Polish (%)", "mean rewrites"):
        assert 0 <= number(rows[key]["generated (2)"]) <= 100
    assert number(rows["problems"]["bundled few-shot (1)"]) == 1


# --- mova.artifacts ------------------------------------------------------------------------------
def test_build_once_reuses_only_with_the_same_arguments(tmp_path, capsys):
    from mova.artifacts import RECORD, build_once

    folder = tmp_path / "model"
    builds = []

    def build(tag: str):
        def go():
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "config.json").write_text(json.dumps({"tag": tag}))
            builds.append(tag)
        return go

    assert build_once(folder, {"layers": 2, "sizes": (1, 2)}, build("a")) is True
    assert build_once(folder, {"sizes": [1, 2], "layers": 2}, build("b")) is False  # same key, other order/types
    assert builds == ["a"]
    assert build_once(folder, {"layers": 4, "sizes": [1, 2]}, build("c")) is True
    assert builds == ["a", "c"] and json.loads((folder / "config.json").read_text())["tag"] == "c"
    assert "layers: 2 -> 4" in capsys.readouterr().err
    # a folder built before records existed is not trusted
    (folder / RECORD).unlink()
    (folder / "stale.bin").write_text("x")
    assert build_once(folder, {"layers": 4, "sizes": [1, 2]}, build("d")) is True
    assert not (folder / "stale.bin").exists()
    # a build that leaves no marker is an error, not a silent reuse next time
    with pytest.raises(RuntimeError, match="did not write config.json"):
        build_once(tmp_path / "other", {"x": 1}, lambda: None)


def test_rebuild_says_what_changed(tmp_path, capsys):
    from mova.artifacts import build_once

    def build():
        (tmp_path / "m").mkdir(exist_ok=True)
        (tmp_path / "m" / "config.json").write_text("{}")

    build_once(tmp_path / "m", {"steps": 3, "width": 32}, build)
    capsys.readouterr()
    build_once(tmp_path / "m", {"steps": 4, "width": 32, "kind": "cot"}, build)
    err = capsys.readouterr().err
    assert f"rebuilding {tmp_path / 'm'}: built with other arguments (kind: '<unset>' -> 'cot'; steps: 3 -> 4)" in err


def test_claim_keeps_a_resumable_run_with_the_same_arguments(tmp_path):
    from mova.artifacts import claim

    run = tmp_path / "seqft"
    assert claim(run, {"train": 120}) is False
    (run / "state.json").write_text("{}")
    assert claim(run, {"train": 120}) is False and (run / "state.json").is_file()  # resumes
    assert claim(run, {"train": 60}) is True and not (run / "state.json").exists()  # other sizes: start over
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "state.json").write_text("{}")
    assert claim(legacy, {"train": 60}) is True and not (legacy / "state.json").exists()


def test_safety_pareto_quick(tmp_path):
    out = run_quick("safety_pareto.py", "--out", str(tmp_path / "pareto"), "--grpo", cwd=tmp_path, timeout=600).stdout
    rows = table(out, "| method | setting |")
    assert [r["method"] for r in rows] == ["start (sft)", "DPO", "PPO-max", "GRPO"]
    for r in rows:
        for key in ("harm unsafe %", "harm refusal %", "help refusal %", "VQA %"):
            assert 0 <= number(r[key]) <= 100, (key, r)
    assert rows[0]["help RM gain"] == "-" and rows[1]["help RM gain"] != "-"  # the reward-model judge ran
    saved = json.loads((tmp_path / "pareto" / "results.json").read_text())
    assert len(saved) == 4 and saved[1]["setting"] == "beta 0.1, mix 1.0, 2 steps"


def test_grpo_vs_ppo_quick(tmp_path):
    out = run_quick("grpo_vs_ppo.py", "--out", str(tmp_path / "g"), cwd=tmp_path).stdout
    rows = table(out, "| method | reward (first 3)")
    assert [r["method"] for r in rows] == ["ppo", "grpo", "rloo"]
    for r in rows:
        assert 0 <= number(r["reward (last 5)"]) <= 1 and number(r["s / iteration"]) > 0
    assert (tmp_path / "g" / "grpo_vs_ppo.png").is_file()


def test_bench_shape_quick(tmp_path):
    out = run_quick("bench_shape.py", "--out", str(tmp_path / "bench.md"), cwd=tmp_path).stdout
    sft = table(out, "| variant | tokens/s |")
    assert [r["variant"] for r in sft] == ["padded, live", "packed, live", "packed, cached features",
                                           "packed, live, act. ckpt"]
    for r in sft:
        assert number(r["tokens/s"]) > 0 and 0 < number(r["MFU"]) < 100 and number(r["step ms"]) > 0
        assert re.fullmatch(r"[\d.,]+ \([\d.,]+-[\d.,]+\)", r["tokens/s"])  # median (min-max) of the repetitions
    assert number(sft[0]["vs padded, live (tokens/s)"]) == 1.0
    dpo = table(out, "| pair encoding | pairs/s |")
    assert [r["pair encoding"] for r in dpo] == ["padded", "shared"]
    # the shared layout lays each prompt (and its image tokens) out once: fewer token slots than the padded one
    assert number(dpo[1]["token slots / step"]) < number(dpo[0]["token slots / step"])
    rl = table(out, "| method | samples / iteration |")
    assert [r["method"] for r in rl] == ["grpo", "ppo"]
    for r in rl:
        parts = [number(r[k]) for k in ("generate s", "score s", "train s")]
        # medians of the parts need not add up to the median of the sums: close, not equal
        assert number(r["iteration s"]) == pytest.approx(sum(parts), rel=0.25)
        assert 0 < number(r["generation share"]) < 100
    assert (tmp_path / "bench.md").read_text().count("###") == 3


def test_rm_noisy_feature_heads_quick(tmp_path):
    out = run_quick("rm_noisy.py", "--model", "tiny", "--out-dir", str(tmp_path / "rmf"), cwd=tmp_path).stdout
    rows = table(out, "| method | 20% flipped |")
    assert [r["method"] for r in rows] == ["bt", "label_smoothing", "margin", "flip", "flip+margin"]
    assert all(0 <= number(r["20% flipped"]) <= 1 for r in rows)
    found = table(out, "| flipped | flipped pairs the ensemble")
    assert re.fullmatch(r"\d+/\d+", found[0]["flipped pairs the ensemble put below zero"])
    assert list((tmp_path / "rmf").glob("features-seed0-*.safetensors")), "the features were not cached"


def test_rm_noisy_features_are_last_token_states_whatever_the_padding(tmp_path):
    """A text's feature must not depend on the batch it is padded into (left padding, last position)."""
    import torch

    sys.path.insert(0, str(BENCH))
    from rm_noisy import lm_features

    from mova.model.tiny import tiny_text_lm

    tiny_text_lm(tmp_path / "lm", seed=0)
    texts = ["Request 1: tell me about the lamp.\nClear answer.", "Hi.", "A much longer text than the others, "
             "with many more words in it to force padding."]
    alone = torch.cat([lm_features(str(tmp_path / "lm"), [t]) for t in texts])
    batched = lm_features(str(tmp_path / "lm"), texts)
    torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(alone[0], alone[1])


def test_smol_safety_dpo_quick(tmp_path):
    out = run_quick("smol_safety_dpo.py", "--out", str(tmp_path / "ssd"), cwd=tmp_path).stdout
    rows = table(out, "| model | harmful refused (%)")
    assert [r["model"] for r in rows] == ["base", "DPO lr 0.001"]
    for r in rows:
        for col in ("harmful refused (%)", "benign refused (%)", "arithmetic (%)"):
            assert 0 <= number(r[col]) <= 100


def test_r3_arith_model_path_quick(tmp_path):
    out = run_quick("r3_arith.py", "--model", "tiny", "--out", str(tmp_path / "r3m"), cwd=tmp_path).stdout
    calib = table(out, "| steps | largest number |")
    assert len(calib) == 1 and 0 <= number(calib[0]["accuracy (%)"]) <= 100
    rows = table(out, "| seed | base | SFT |")
    assert list(rows[0]) == ["seed", "base", "SFT", "outcome PPO", "R3 PPO", "R3 GRPO"]
    runs = table(out, "| method | reward per iteration")
    assert [r["method"] for r in runs] == ["outcome PPO", "R3 PPO", "R3 GRPO"]
    assert all(number(r["peak RSS MiB"]) > 0 for r in runs)


def test_smol_problems_hold_out_phrasings_and_solve_right():
    sys.path.insert(0, str(BENCH))
    from r3_arith import SMOL_PHRASINGS, SMOL_TEST_PHRASINGS, smol_problems

    train = smol_problems(60, 2, 10, 0, test=False)
    test = smol_problems(30, 2, 10, 0, test=True)
    held = [s for pair in SMOL_PHRASINGS[-SMOL_TEST_PHRASINGS:] for s in pair]
    verbs = [s.split("{n}")[0].replace("{p} ", "") for s in held]  # "receives ", "drops ", ...
    assert not any(v in r["question"] for r in train for v in verbs)
    assert all(any(v in r["question"] for v in verbs) for r in test)
    for r in train + test:  # every rationale line is true arithmetic and the last value is the answer
        lines = r["answer"].splitlines()
        value = None
        for line in lines[:-1]:
            a, op, b, _, c = line.split()
            assert (int(a) + int(b) if op == "+" else int(a) - int(b)) == int(c) >= 0
            value = int(c)
        assert lines[-1] == f"#### {value}"


def test_smol_continual_quick(tmp_path):
    out = run_quick("smol_continual.py", "--out", str(tmp_path / "continual"), cwd=tmp_path).stdout
    for name in ("seqft", "replay", "lora", "rcl"):
        assert f"| {name} |" in out
    report = json.loads((tmp_path / "continual" / "report.json").read_text())
    assert set(report) == {"seqft", "replay", "lora", "rcl"} and all(r["complete"] for r in report.values())
