"""The run report (one PNG): accuracy and selection over epochs, images trained on per class
per epoch, the pool's coverage of each class, final per-class accuracy, and the method note."""

from __future__ import annotations

import textwrap
from pathlib import Path


def write_report(
    history: list[dict], path: Path, class_names: list[str] | None = None, note: str = ""
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    final = history[-1]
    epochs = [m["epoch"] for m in history]
    classes = len(final.get("eval_per_class") or final.get("selected_per_class") or [])
    names = class_names or [str(i) for i in range(classes)]
    fig, axes = plt.subplots(2, 3, figsize=(16, 8.5))
    ax = axes[0, 0]
    evaluated = [(m["epoch"], m["eval_accuracy"]) for m in history if "eval_accuracy" in m]
    if evaluated:
        ax.plot(*zip(*evaluated, strict=True), marker="o")
    ax.set(title="evaluation accuracy", xlabel="epoch", ylabel="accuracy")

    ax = axes[0, 1]
    ax.plot(epochs, [m["selected"] for m in history], marker="o", label="|S_e|")
    if "teacher_share" in final:
        twin = ax.twinx()
        twin.plot(epochs, [m["teacher_share"] for m in history], color="grey", ls="--")
        twin.set_ylabel("teacher share a_e")
    if "selection_precision" in final:
        twin2 = ax.twinx()
        twin2.spines["right"].set_position(("axes", 1.15))
        twin2.plot(epochs, [m.get("selection_precision") for m in history], color="green")
        twin2.set_ylabel("selection precision", color="green")
    ax.set(title="images trained on per epoch", xlabel="epoch", ylabel="images")

    ax = axes[0, 2]
    per_class = final.get("eval_per_class")
    if per_class:
        ax.bar(range(len(per_class)), [v if v is not None else 0 for v in per_class])
        ax.set_xticks(range(len(per_class)), names, rotation=45, ha="right")
    ax.set(title="final per-class accuracy", ylabel="accuracy")

    ax = axes[1, 0]
    if "selected_per_class" in final:
        for c, name in enumerate(names):
            ax.plot(epochs, [m["selected_per_class"][c] for m in history], label=name)
        ax.legend(fontsize=7, ncol=2)
    ax.set(title="images trained on per class (pseudo-label)", xlabel="epoch", ylabel="images")

    ax = axes[1, 1]
    cover = final.get("pool_coverage")
    if cover:
        confident = cover["confident_per_class"]
        ax.bar(range(len(confident)), confident, label="teacher confident")
        ax.set_xticks(range(len(confident)), names, rotation=45, ha="right")
    ax.set(title="pool images the teacher is confident about", ylabel="images")

    ax = axes[1, 2]
    ax.axis("off")
    lines = [f"method: {note}"] if note else []
    lines += [f"warning: {w}" for w in (cover or {}).get("warnings", [])]
    text = "\n".join(textwrap.fill(line, 60, subsequent_indent="  ") for line in lines)
    ax.text(0, 1, text or "no warnings", va="top", fontsize=8, family="monospace")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
