"""How well do selection rules pick web-pool images the teacher labels correctly?

    .venv/bin/python bench/selection_rules.py                      # newest cached cpu teacher
    .venv/bin/python bench/selection_rules.py --teacher T.pt --views 4

Scores the teacher's pseudo-labels on webpool_tinyimagenet32.npz against the pool's hidden `y`
(which no method ever sees) for several rules: everything (what KD trains on), KD3's class-wise
FlexMatch thresholds at a_e = 1 (its first epochs), global confidence thresholds, and DFND's
top half by confidence. Each rule is scored on the clean images and on augmented views like
the ones KD3's selection pass uses (RandomResizedCrop scale 0.08-1 + flip). Precision: share of
selected images whose label is the pseudo-label (distractors never are); recall: right picks
over the 12,650 labelled images.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distill.checkpoints import load_model  # noqa: E402
from distill.data import Normalizer, load_images  # noqa: E402
from distill.evaluation import predict_logits  # noqa: E402
from distill.kd3 import select_instances  # noqa: E402


def newest_teacher() -> Path:
    found = sorted(
        (ROOT / ".cache" / "bench").glob("teacher-resnet20-*/teacher.pt"),
        key=lambda p: p.stat().st_mtime,
    )
    if not found:
        sys.exit("selection_rules: no cached teacher; run bench/distill_cifar10.py first")
    return found[-1]


def score(mask: torch.Tensor, pseudo: torch.Tensor, labels: torch.Tensor,
          uncovered: list[int]) -> list[float]:  # fmt: skip
    """|S|, precision, recall, share of distractors in S, share of S labelled as a class the
    pool does not hold."""
    chosen = max(mask.sum().item(), 1)
    right = (mask & (pseudo == labels)).sum().item()
    distractors = (mask & (labels < 0)).sum().item()
    to_uncovered = (mask & torch.isin(pseudo, torch.tensor(uncovered))).sum().item()
    labelled = (labels >= 0).sum().item()
    return [mask.sum().item(), right / chosen, right / labelled, distractors / chosen,
            to_uncovered / chosen]  # fmt: skip


def rules(logits: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    prob = torch.softmax(logits, 1)
    conf, pseudo = prob.max(1)
    out = {"all (KD)": (torch.ones_like(conf, dtype=torch.bool), pseudo)}
    sel = select_instances(logits, torch.zeros_like(logits), 1.0)
    out["class-wise tau 0.95 (KD3)"] = (sel.mask, sel.pseudo_labels)
    robust = select_instances(logits, torch.zeros_like(logits), 1.0, bounds=(0.5, 0.8))
    out["clamped to [0.5, 0.8] (kd3)"] = (robust.mask, robust.pseudo_labels)
    for t in (0.5, 0.7, 0.9, 0.95):
        out[f"global p > {t}"] = (conf > t, pseudo)
    top = torch.zeros_like(conf, dtype=torch.bool)
    top[conf.argsort(descending=True)[: len(conf) // 2]] = True
    out["top 50% by p (DFND)"] = (top, pseudo)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", help="teacher checkpoint (default: newest cached cpu one)")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--views", type=int, default=2, help="augmented views to average over")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))

    teacher, meta = load_model(args.teacher or newest_teacher())
    pool = load_images(Path(args.data_dir) / "webpool_tinyimagenet32.npz", 32)
    labels = pool.labels
    covered = sorted(set(labels[labels >= 0].tolist()))
    uncovered = [c for c in range(meta.num_classes) if c not in covered]
    norm = Normalizer(meta.mean, meta.std, meta.input_size, torch.device("cpu"))
    names = meta.class_names or [str(c) for c in range(meta.num_classes)]
    print(f"pool {len(pool)}: {int((labels >= 0).sum())} labelled, "
          f"{int((labels < 0).sum())} distractors; classes not in the pool: "
          f"{', '.join(names[c] for c in uncovered)}")  # fmt: skip

    clean = predict_logits(teacher, pool.images, norm)
    views = []
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for _ in range(args.views):
            parts = [teacher(norm.train(p, gen, (0.08, 1.0))) for p in pool.images.split(1024)]
            views.append(torch.cat(parts).float())

    header = (f"{'rule':<28} {'|S|':>6} {'precision':>9} {'recall':>7} "
              f"{'distractors':>12} {'->uncovered':>11}")  # fmt: skip
    for title, all_logits in (("clean images", [clean]), ("augmented views", views)):
        print(f"\n{title}" + (f" (mean of {len(all_logits)})" if len(all_logits) > 1 else ""))
        print(header)
        per_rule: dict[str, list[list[float]]] = {}
        for logits in all_logits:
            for name, (mask, pseudo) in rules(logits).items():
                per_rule.setdefault(name, []).append(score(mask, pseudo, labels, uncovered))
        for name, rows in per_rule.items():
            n, prec, rec, dis, unc = np.mean(rows, axis=0)
            print(f"{name:<28} {n:>6.0f} {prec:>9.3f} {rec:>7.3f} {dis:>12.3f} {unc:>11.3f}")

    sel = select_instances(clean, torch.zeros_like(clean), 1.0)
    print("\nclass-wise thresholds on clean images: class, N_c, tau_c, selected, precision")
    for c, name in enumerate(names):
        picked = sel.mask & (sel.pseudo_labels == c)
        right = (picked & (labels == c)).sum().item()
        n = picked.sum().item()
        prec = f"{right / n:.3f}" if n else "-"
        print(f"  {name:<11} {sel.counts[c].item():>6} {sel.thresholds[c].item():.3f} "
              f"{n:>6} {prec:>6}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
