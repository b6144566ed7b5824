"""Reports of a continual run: ``report.json`` (R, OP, BWT, FWT per strategy), ``report.md`` and a heatmap
of each strategy's R. Scores are stored in [0, 1] and shown as percentages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def markdown_table(results: dict[str, dict[str, Any]]) -> str:
    """One row per strategy: OP, BWT, FWT (percentage points) and the final row of R."""
    names = next(iter(results.values()))["tasks"] if results else []
    head = "| strategy | OP | BWT | FWT | " + " | ".join(names) + " |"
    sep = "|" + "---|" * (4 + len(names))
    lines = [head, sep]
    for strategy, r in results.items():
        last = r["R"][-1] if r["R"] else [None] * len(names)
        lines.append(f"| {strategy} | {_pct(r['OP'])} | {_pct(r['BWT'])} | {_pct(r['FWT'])} | "
                     + " | ".join(_pct(v) for v in last) + " |")
    return "\n".join(lines)


def matrix_markdown(strategy: str, r: dict[str, Any]) -> str:
    names = r["tasks"]
    lines = [f"**{strategy}**: R[t][i] (row: after training task t; column: task i), with OP_t and BWT_t", "",
             "| after \\ on | " + " | ".join(names) + " | OP_t | BWT_t |", "|" + "---|" * (len(names) + 3)]
    if r.get("baseline"):
        lines.append("| (start) | " + " | ".join(_pct(v) for v in r["baseline"]) + " | | |")
    for t, row in enumerate(r["R"]):
        lines.append(f"| {names[t]} | " + " | ".join(_pct(v) for v in row)
                     + f" | {_pct(r['OP_t'][t])} | {_pct(r['BWT_t'][t])} |")
    return "\n".join(lines)


def heatmap(strategy: str, r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = r["tasks"]
    rows = len(r["R"])
    data = np.full((rows, len(names)), np.nan)
    for t, row in enumerate(r["R"]):
        for i, v in enumerate(row):
            if v is not None:
                data[t, i] = 100 * v
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 0.7 * rows + 1.8))
    im = ax.imshow(data, vmin=0, vmax=100, cmap="viridis")
    for t in range(rows):
        for i in range(len(names)):
            if not np.isnan(data[t, i]):
                ax.text(i, t, f"{data[t, i]:.0f}", ha="center", va="center",
                        color="white" if data[t, i] < 60 else "black", fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(rows), [f"after {n}" for n in names[:rows]])
    ax.set_title(f"{strategy}: R (OP {_pct(r['OP'])}, BWT {_pct(r['BWT'])})")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_reports(results: dict[str, dict[str, Any]], out_dir: str | Path) -> dict[str, str]:
    """Write ``report.json``, ``report.md`` and ``R_<strategy>.png``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(results, indent=1) + "\n")
    parts = ["# Continual learning results", "", "Scores in percent. OP = mean over seen tasks after the last "
             "task; BWT = mean change on earlier tasks since each was learned (negative: forgetting); FWT = "
             "mean score on each task just before training it minus the starting model's.", "",
             markdown_table(results), ""]
    paths = {"json": str(out / "report.json"), "markdown": str(out / "report.md")}
    for strategy, r in results.items():
        parts += [matrix_markdown(strategy, r), ""]
        if r.get("probes"):
            parts += [f"{strategy} general probes (delta from the start, points): "
                      + ", ".join(f"{k} {100 * v:+.1f}" for k, v in r["probes"]["final_delta"].items()), ""]
        if r.get("notes", {}).get("kept"):
            parts += [f"{strategy} teacher paths kept: " + ", ".join(
                f"{k} {v['kept']}/{v['total']}" for k, v in r["notes"]["kept"].items()), ""]
        png = out / f"R_{strategy}.png"
        if r["R"]:
            heatmap(strategy, r, png)
            paths[f"heatmap_{strategy}"] = str(png)
    (out / "report.md").write_text("\n".join(parts))
    return paths


__all__ = ["heatmap", "markdown_table", "matrix_markdown", "write_reports"]
