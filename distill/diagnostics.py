"""What a run can say about its pool: how well the teacher covers each class, and, where the
pool carries hidden labels (benchmarks), how often a selection's pseudo-labels are right.
Nothing here enters a loss."""

from __future__ import annotations

import torch

# An image counts as "confident" for class c when the teacher gives c at least this probability.
CONFIDENT = 0.8
# A class with fewer confident images than this share of an even split (N / C) is reported as
# barely covered; with 16k images and 10 classes that is 162 images.
THIN_SHARE = 0.1


def coverage(
    teacher_logits: torch.Tensor, class_names: list[str] | None, labels: torch.Tensor | None = None
) -> dict:
    """Confident images per class on the clean pool, and one warning per thin class.

    Where the pool knows each image's class (a crawl's keyword class, an import's folder), an
    image counts for its class when the teacher confidently agrees with it; otherwise for the
    class the teacher confidently predicts. The first also catches a class the pool lacks but
    the teacher hallucinates on other images (birds called airplanes)."""
    probs = torch.softmax(teacher_logits.float(), 1)
    conf, label = probs.max(1)
    c = probs.shape[1]
    known = labels is not None and bool((labels >= 0).any())
    if known:
        labels = labels.to(probs.device)
        keep = labels >= 0
        agree = probs[keep].gather(1, labels[keep].view(-1, 1)).flatten() >= CONFIDENT
        confident = torch.bincount(labels[keep][agree], minlength=c).tolist()
    else:
        confident = torch.bincount(label[conf >= CONFIDENT], minlength=c).tolist()
    n = len(label)
    names = class_names or [str(i) for i in range(c)]
    need = THIN_SHARE * n / c
    warnings = [
        f"{names[k]}: {confident[k]:,} confident images of {n:,}: the pool lacks this class; "
        "crawl more"
        for k in range(c)
        if confident[k] < need
    ]
    return {
        "confident_per_class": confident,
        "confident_means": "teacher agrees with the pool's class" if known else "teacher argmax",
        "argmax_per_class": torch.bincount(label, minlength=c).tolist(),
        "warnings": warnings,
    }


def precision(labels: torch.Tensor, selected: torch.Tensor, pseudo: torch.Tensor, c: int) -> dict:
    """Against the pool's known labels: the share of selected images whose label matches the
    pseudo-label, overall and per pseudo-label, and the share of labelled images selected with
    the right pseudo-label. Empty when the pool has no labels."""
    labels = labels.cpu()
    if not (labels >= 0).any():
        return {}
    hit = labels[selected] == pseudo
    right = int(hit.sum())
    per_class = torch.bincount(pseudo, minlength=c)
    per_class_hits = torch.bincount(pseudo[hit], minlength=c)
    return {
        "selection_precision": right / max(1, len(selected)),
        "selection_recall": right / max(1, int((labels >= 0).sum())),
        "selection_precision_per_class": [
            round(h / n, 4) if n else None
            for h, n in zip(per_class_hits.tolist(), per_class.tolist(), strict=True)
        ],
    }
