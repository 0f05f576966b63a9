"""The run report: accuracy and selection over epochs, and final per-class accuracy (one PNG)."""

from __future__ import annotations

from pathlib import Path


def write_report(history: list[dict], path: Path, class_names: list[str] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [m["epoch"] for m in history]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    acc = [m.get("eval_accuracy") for m in history]
    if any(a is not None for a in acc):
        axes[0].plot(epochs, [a if a is not None else float("nan") for a in acc], marker="o")
    axes[0].set(title="evaluation accuracy", xlabel="epoch", ylabel="accuracy")
    axes[1].plot(epochs, [m["selected"] for m in history], marker="o", label="|S_e|")
    if "teacher_share" in history[-1]:
        twin = axes[1].twinx()
        twin.plot(epochs, [m["teacher_share"] for m in history], color="grey", ls="--")
        twin.set_ylabel("teacher share a_e")
    if "selection_precision" in history[-1]:
        twin2 = axes[1].twinx()
        twin2.spines["right"].set_position(("axes", 1.15))
        twin2.plot(epochs, [m.get("selection_precision") for m in history], color="green")
        twin2.set_ylabel("selection precision", color="green")
    axes[1].set(title="images trained on per epoch", xlabel="epoch", ylabel="images")
    per_class = history[-1].get("eval_per_class")
    if per_class:
        names = class_names or [str(i) for i in range(len(per_class))]
        axes[2].bar(range(len(per_class)), [v if v is not None else 0 for v in per_class])
        axes[2].set_xticks(range(len(per_class)), names, rotation=45, ha="right")
    axes[2].set(title="final per-class accuracy", ylabel="accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
