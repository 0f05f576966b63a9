"""Benchmark: KD3 against KD, DFND, random selection and supervised training, CIFAR-10 teacher,
web-like Tiny-ImageNet pool (../shared/data, see its README).

    # the main comparison (kd, dfnd, random, kd3, kd3-paper), 3 seeds: ~90 min on 2 cores
    nice -n 10 .venv/bin/python bench/distill_cifar10.py --seeds 0,1,2 \
        --results bench/results/distill_cifar10_cpu_seeds.json
    # one-factor ablations on one seed (compare them on the val column)
    nice -n 10 .venv/bin/python bench/distill_cifar10.py --runs kd,kd_rrc0.08,kd3-paper_padcrop
    nice -n 10 .venv/bin/python bench/distill_cifar10.py --quick       # a few minutes: a check
    .venv/bin/python bench/distill_cifar10.py --preset gpu             # one H100

Runs already finished in --out are read back, not trained again, so two processes (say
`--threads 1` each, with different --runs or --seeds) can share the work and a last call over
everything prints the whole table.

The teacher is trained once per preset on cifar10_train_jpeg.npz and cached under .cache/bench/
at the project root; every student is distilled from the pool's images only (`x`). The pool's
hidden `y` is used only to measure selection precision. Every
accuracy is measured on cifar10_test.npz; the headline is the final epoch's accuracy, the best
epoch's is printed beside it and never used to choose anything. Settings are compared on the
`val` column instead: the final student's accuracy on 5,000 CIFAR-10 training images that no
student trains on (the teacher did, so val is optimistic, but it ranks students without
touching the test set).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distill.checkpoints import load_model  # noqa: E402
from distill.data import ImageSet, Normalizer, load_images  # noqa: E402
from distill.evaluation import evaluate  # noqa: E402
from distill.kd3 import class_thresholds  # noqa: E402
from distill.trainer import TrainConfig, Trainer, pick_device  # noqa: E402


@dataclass
class Preset:
    teacher: str
    student: str
    teacher_epochs: int
    teacher_lr: float
    epochs: int
    lr: float = 0.05
    batch_size: int = 256
    teacher_batch_size: int = 256
    # the teacher's recipe (kd3 train-teacher's defaults): SGD nesterov, one-cycle lr, pad-crop
    teacher_schedule: str = "onecycle"
    teacher_nesterov: bool = True
    teacher_augment: str = "padcrop"
    limit_train: int | None = None  # images of each file used (None: all)
    limit_pool: int | None = None
    limit_test: int | None = None


PRESETS = {
    # ResNet-20 teacher (12 epochs, ~35-45 min, cached), ResNet-8 students for 10 epochs: one
    # seed of the main comparison measured ~57 min in a 1-thread process (kd 13.5, kd3 14,
    # kd3-paper 16, dfnd 6.5, random 7), so 3 seeds take ~90 min as two 1-thread processes
    "cpu": Preset(
        "resnet20", "resnet8", teacher_epochs=12, teacher_lr=0.2, teacher_batch_size=128, epochs=10
    ),
    # paper scale (ResNet-34 -> ResNet-18, CIFAR-style stems), sized from estimates (not yet
    # measured) for ~10 minutes on one H100
    "gpu": Preset(
        "resnet34_cifar",
        "resnet18_cifar",
        teacher_epochs=30,
        teacher_lr=0.1,
        epochs=24,
        batch_size=512,
        teacher_batch_size=512,
    ),
}
QUICK = {"teacher_epochs": 2, "epochs": 2, "limit_train": 4000, "limit_pool": 2000}
QUICK["limit_test"] = 1000
VAL_SIZE = 5000  # CIFAR-10 training images used to compare settings (never the test set)

# name -> (method, TrainConfig overrides). The main comparison: the baselines, the default
# KD3 recipe and the paper's.
RUNS = {
    "student_on_original": ("supervised", {}),
    "kd": ("kd", {}),
    "dfnd": ("dfnd", {}),
    "random": ("random", {}),
    "kd3": ("kd3", {}),
    "kd3-paper": ("kd3-paper", {}),
}
MAIN = ["kd", "dfnd", "random", "kd3", "kd3-paper"]
RRC_008 = {"augment": "rrc", "crop_scale": (0.08, 1.0)}
# The previous default kd3 recipe: one pass over the selection per epoch, with MixDistribution.
KD3_V1 = {"epoch_size": "selection", "mixing": True}
# One factor at a time (run when named with --runs; compare on the val column).
ABLATIONS = {
    # augmentation, for KD and for KD3 alike
    "kd_rrc0.08": ("kd", RRC_008),
    "kd_rrc0.35": ("kd", {"augment": "rrc", "crop_scale": (0.35, 1.0)}),
    "kd3-paper_padcrop": ("kd3-paper", {"augment": "padcrop"}),
    "kd3_rrc0.08": ("kd3", RRC_008),
    "kd3v1_rrc0.08": ("kd3", {**KD3_V1, **RRC_008}),
    # optimizer steps: selection halves them unless the epoch is as long as the pool
    "kd3v1": ("kd3", KD3_V1),
    "kd3_selection_epochs": ("kd3", {"epoch_size": "selection"}),
    "kd_b128": ("kd", {"batch_size": 128}),
    "kd3_b128": ("kd3", {"batch_size": 128}),
    # schedule length: does the paper's recipe catch up later?
    "kd3-paper_60ep": ("kd3-paper", {"epochs": 60}),
    "kd_60ep": ("kd", {"epochs": 60}),
    # the default's parts, one at a time
    "kd3_with_mixing": ("kd3", {"mixing": True}),
    "kd3_no_kd_term": ("kd3", {"kd_weight": 0.0}),
    "kd3_paper_selection": ("kd3", {"selection_rule": "paper", "share_floor": 0.0}),
    "kd3_no_selection": ("kd3", {"selection": False}),
    "kd3_no_sharing": ("kd3", {"sharing": False}),
    "kd3-paper_no_selection": ("kd3-paper", {"selection": False}),
}


@dataclass
class RunRow:
    name: str
    final_accuracy: float
    final_covered: float | None
    best_accuracy: float
    val_accuracy: float | None = None
    selection_precision: float | None = None
    selected_mean: float | None = None
    seconds_per_epoch: float | None = None
    images_per_second: float | None = None
    seed: int = 0
    history: list = field(default_factory=list)


def data_dir(arg: str | None) -> Path:
    path = Path(arg or os.environ.get("KD3_BENCH_DATA") or ROOT.parent / "shared" / "data")
    for name in ("cifar10_train_jpeg.npz", "cifar10_test.npz", "webpool_tinyimagenet32.npz"):
        if not (path / name).exists():
            sys.exit(f"bench: {path / name} missing; pass --data-dir or set KD3_BENCH_DATA")
    return path


def head(data: ImageSet, limit: int | None, seed: int = 0) -> ImageSet:
    """A fixed random subset (the files are sorted by class, so never take the first rows)."""
    if limit is None or limit >= len(data):
        return data
    keep = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:limit]
    keep = keep.sort().values
    return ImageSet(data.images[keep], data.labels[keep], data.class_names, data.source)


def cached_train_images(path: Path, cache: Path) -> ImageSet:
    """Decoding the 50k JPEGs takes ~10 s: keep the decoded arrays under .cache/."""
    target = cache / "cifar10_train_decoded.npz"
    if not target.exists():
        data = load_images(path, 32)
        tmp = target.with_suffix(".tmp.npz")
        np.savez(tmp, x=data.images.numpy(), y=data.labels.numpy(), class_names=data.class_names)
        tmp.replace(target)
    return load_images(target, 32)


def train_teacher(preset: Preset, train: ImageSet, cache: Path, device) -> Path:
    key = hashlib.sha256(
        json.dumps(
            [
                preset.teacher,
                preset.teacher_epochs,
                preset.teacher_lr,
                preset.limit_train,
                preset.teacher_batch_size,
                len(train),
                preset.teacher_schedule,
                preset.teacher_nesterov,
                preset.teacher_augment,
            ]
        ).encode()  # fmt: skip
    ).hexdigest()[:12]
    out = cache / f"teacher-{preset.teacher}-{key}"
    ckpt = out / "teacher.pt"
    if ckpt.exists():
        print(f"teacher: cached {ckpt}", flush=True)
        return ckpt
    cfg = TrainConfig(
        method="supervised",
        student=preset.teacher,
        epochs=preset.teacher_epochs,
        batch_size=preset.teacher_batch_size,
        lr=preset.teacher_lr,
        schedule=preset.teacher_schedule,
        nesterov=preset.teacher_nesterov,
        augment=preset.teacher_augment,
        crop_scale=(0.35, 1.0),
    )
    print(f"teacher: training {preset.teacher} for {preset.teacher_epochs} epochs", flush=True)
    Trainer(cfg, train, out, device=device).run(resume=True, final_name="teacher.pt")
    return ckpt


def summarise(
    name: str, history: list[dict], covered: list[int], val_accuracy: float | None
) -> RunRow:
    final = history[-1]
    per_class = final["eval_per_class"]
    on_covered = [per_class[c] for c in covered if per_class[c] is not None]
    precisions = [m["selection_precision"] for m in history if "selection_precision" in m]
    return RunRow(
        name=name,
        final_accuracy=final["eval_accuracy"],
        final_covered=sum(on_covered) / len(on_covered) if on_covered else None,
        best_accuracy=max(m["eval_accuracy"] for m in history if "eval_accuracy" in m),
        val_accuracy=val_accuracy,
        selection_precision=float(np.mean(precisions)) if precisions else None,
        selected_mean=float(np.mean([m["selected"] for m in history])),
        seconds_per_epoch=float(np.mean([m["epoch_seconds"] for m in history])),
        images_per_second=float(np.mean([m["images_per_second"] for m in history])),
        history=history,
    )


def fmt(value, spec=".4f"):
    return "-" if value is None else format(value, spec)


def print_table(rows: list[RunRow], teacher_acc: float, teacher_covered: float) -> None:
    print()
    header = (f"{'run':<22} {'seed':>4} {'final':>7} {'covered7':>8} {'best':>7} {'val':>7} {'sel.prec':>8} "
              f"{'|S_e|':>7} {'s/epoch':>8} {'img/s':>7}")  # fmt: skip
    print(header)
    print("-" * len(header))
    print(f"{'teacher':<22} {'':>4} {teacher_acc:>7.4f} {teacher_covered:>8.4f}")
    for r in rows:
        print(
            f"{r.name:<22} {r.seed:>4} {r.final_accuracy:>7.4f} {fmt(r.final_covered):>8} "
            f"{r.best_accuracy:>7.4f} {fmt(r.val_accuracy):>7} "
            f"{fmt(r.selection_precision, '.3f'):>8} "
            f"{fmt(r.selected_mean, '.0f'):>7} {fmt(r.seconds_per_epoch, '.1f'):>8} "
            f"{fmt(r.images_per_second, '.0f'):>7}"
        )
    by_name = {r.name: r for r in rows}
    for name in ("kd3", "kd3-paper"):
        if "kd" in by_name and name in by_name:
            ratio = by_name[name].seconds_per_epoch / by_name["kd"].seconds_per_epoch
            print(f"\n{name} seconds per epoch / KD seconds per epoch: {ratio:.2f}")
            history = by_name[name].history
            select = np.mean([m["selection_seconds"] for m in history])
            print(f"{name} selection pass: {select:.1f} s per epoch on average")


def print_selection(rows: list[RunRow], class_names: list[str]) -> None:
    """Per epoch, for every run that selects each epoch: the teacher's share a_e, |S_e|, and
    precision / recall against the pool's hidden labels; then, per pseudo-label, the argmax
    count N_c, the threshold tau_c, the selected count and its precision at the first epoch,
    the last epoch with the teacher in the blend, and the final epoch."""
    for r in rows:
        history = [m for m in r.history if "teacher_share" in m]
        if not history:
            continue
        print(f"\nselection of {r.name}: epoch, a_e, |S_e|, precision, recall")
        for m in history:
            print(f"  {m['epoch']:>3} {m['teacher_share']:.3f} {m['selected']:>6} "
                  f"{m.get('selection_precision', 0):.3f} {m.get('selection_recall', 0):.3f}")  # fmt: skip
        with_teacher = [m for m in history if m["teacher_share"] > 0]
        picks = {history[0]["epoch"], history[-1]["epoch"]}
        if with_teacher:
            picks.add(with_teacher[-1]["epoch"])
        for m in history:
            if m["epoch"] not in picks:
                continue
            tau = m.get("thresholds") or class_thresholds(m["argmax_counts"]).tolist()
            print(f"  epoch {m['epoch']} (a_e {m['teacher_share']:.3f}): "
                  "class N_c tau_c selected precision")  # fmt: skip
            per_prec = m.get("selection_precision_per_class") or [None] * len(tau)
            for c, name in enumerate(class_names):
                print(f"    {name:<11} {m['argmax_counts'][c]:>6} {tau[c]:.3f} "
                      f"{m['selected_per_class'][c]:>6} {fmt(per_prec[c], '.3f'):>6}")  # fmt: skip


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    v = np.asarray(values, dtype=float)
    return f"{v.mean():.4f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.4f}"


def print_seeds(by_name: dict[str, list[RunRow]]) -> dict:
    """Mean ± std over seeds per run, and each run's margin over KD (paired by seed)."""
    print("\nover seeds (mean ± sample std; margin = run - kd, paired by seed)")
    header = (f"{'run':<22} {'n':>2} {'final':>16} {'covered7':>16} {'val':>16} "
              f"{'margin final':>16} {'margin cov7':>16} {'sel.prec':>8} {'s/epoch':>8}")  # fmt: skip
    print(header)
    print("-" * len(header))
    kd = {r.seed: r for r in by_name.get("kd", [])}
    summary = {}
    for name, rows in by_name.items():
        final = [r.final_accuracy for r in rows]
        covered = [r.final_covered for r in rows if r.final_covered is not None]
        val = [r.val_accuracy for r in rows if r.val_accuracy is not None]
        paired = [r for r in rows if r.seed in kd]
        margin = [r.final_accuracy - kd[r.seed].final_accuracy for r in paired]
        margin7 = [r.final_covered - kd[r.seed].final_covered for r in paired
                   if r.final_covered is not None]  # fmt: skip
        precision = [r.selection_precision for r in rows if r.selection_precision is not None]
        seconds = [r.seconds_per_epoch for r in rows]
        print(f"{name:<22} {len(rows):>2} {mean_std(final):>16} {mean_std(covered):>16} "
              f"{mean_std(val):>16} {mean_std(margin) if name != 'kd' else '':>16} "
              f"{mean_std(margin7) if name != 'kd' else '':>16} "
              f"{fmt(float(np.mean(precision)) if precision else None, '.3f'):>8} "
              f"{float(np.mean(seconds)):>8.1f}")  # fmt: skip
        summary[name] = {
            "seeds": [r.seed for r in rows],
            "final": final,
            "covered7": covered,
            "val": val,
            "best": [r.best_accuracy for r in rows],
            "margin_over_kd": margin if name != "kd" else None,
            "margin_over_kd_covered7": margin7 if name != "kd" else None,
            "selection_precision": precision,
            "seconds_per_epoch": seconds,
        }
    return summary


def main(argv=None) -> int:
    every = {**RUNS, **ABLATIONS}
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--quick", action="store_true", help="tiny version to check the script")
    parser.add_argument("--epochs", type=int, help="student epochs (overrides the preset)")
    parser.add_argument("--teacher-epochs", type=int)
    parser.add_argument("--runs", help=f"comma list from {', '.join(every)}; 'main' = {MAIN}")
    parser.add_argument("--data-dir", help="folder with the npz files (default ../shared/data)")
    parser.add_argument("--out", help="results folder (default runs/bench-distill-cifar10-PRESET)")
    parser.add_argument("--results", help="also write the per-seed summary JSON here")
    parser.add_argument("--device")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--only-finished", action="store_true",
                        help="report the runs already finished in --out; train nothing")  # fmt: skip
    parser.add_argument("--seeds", default="0", help="comma list of seeds, e.g. 0,1,2")
    parser.add_argument("--eval-every", type=int, default=5,
                        help="test accuracy every k epochs (and the last); 1 for full curves")  # fmt: skip
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    preset = PRESETS[args.preset]
    if args.quick:
        preset = Preset(**{**asdict(preset), **QUICK})
    if args.epochs:
        preset.epochs = args.epochs
    if args.teacher_epochs:
        preset.teacher_epochs = args.teacher_epochs
    names = []
    for item in (args.runs or "main").split(","):
        names += MAIN if item == "main" else [item]
    unknown = [n for n in names if n not in every]
    if unknown:
        sys.exit(f"bench: unknown runs {unknown}")
    seeds = [int(v) for v in args.seeds.split(",")]
    suffix = "-quick" if args.quick else ""
    out = Path(args.out or ROOT / "runs" / f"bench-distill-cifar10-{args.preset}{suffix}")
    cache = ROOT / ".cache" / "bench"
    cache.mkdir(parents=True, exist_ok=True)
    folder = data_dir(args.data_dir)
    device = args.device
    start = time.perf_counter()

    train = head(cached_train_images(folder / "cifar10_train_jpeg.npz", cache), preset.limit_train)
    test = head(load_images(folder / "cifar10_test.npz", 32), preset.limit_test)
    pool = head(load_images(folder / "webpool_tinyimagenet32.npz", 32), preset.limit_pool)
    val = head(train, VAL_SIZE, seed=1)
    covered = sorted(set(pool.labels[pool.labels >= 0].tolist()))
    print(f"train {len(train)}, pool {len(pool)} ({len(covered)} classes covered), "
          f"test {len(test)}; preset {args.preset}{suffix}: {preset}", flush=True)  # fmt: skip

    teacher_path = train_teacher(preset, train, cache, device)
    teacher, meta = load_model(teacher_path)
    dev = pick_device(device)
    t_acc = evaluate(teacher.to(dev), test.to(dev), Normalizer(meta.mean, meta.std, 32, dev), 10)
    print(f"teacher {preset.teacher}: test accuracy {t_acc.overall:.4f}", flush=True)

    rows, by_name = [], {}
    for seed in seeds:
        for name in names:
            method, overrides = every[name]
            settings = {"student": preset.student, "epochs": preset.epochs,
                        "batch_size": preset.batch_size, "lr": preset.lr, "seed": seed}  # fmt: skip
            cfg = TrainConfig(method=method, **{**settings, **overrides})
            print(f"\n== {name} seed {seed} ({method} {overrides or ''})", flush=True)
            run_dir = out / name if seed == 0 else out / f"{name}-seed{seed}"
            if args.only_finished and not (run_dir / "student.pt").exists():
                continue
            if method == "supervised":
                trainer = Trainer(cfg, train, run_dir, eval_set=test, device=device)
            else:
                trainer = Trainer(cfg, pool, run_dir, teacher, meta, test, device=device,
                                  eval_every=args.eval_every)  # fmt: skip
            result = trainer.run(resume=True)
            val_acc = None
            if method != "supervised":  # the supervised student trains on the val images
                student = trainer.student.to(dev)
                val_acc = evaluate(student, val.to(dev), trainer.norm, 10).overall
            row = summarise(name, result.history, covered, val_acc)
            row.seed = seed
            rows.append(row)
            by_name.setdefault(name, []).append(row)

    print_table(rows, t_acc.overall, t_acc.on_classes(covered))
    print_selection([r for r in rows if r.seed == seeds[0]], list(meta.class_names))
    seed_summary = print_seeds(by_name)
    results = {
        "preset": args.preset,
        "quick": args.quick,
        "settings": asdict(preset),
        "seeds": seeds,
        "sizes": {"train": len(train), "pool": len(pool), "test": len(test), "val": len(val)},
        "covered_classes": covered,
        "teacher": {"arch": preset.teacher, "accuracy": t_acc.overall,
                    "covered": t_acc.on_classes(covered), "checkpoint": str(teacher_path)},
        "runs": seed_summary,
        "per_run": [{k: v for k, v in asdict(r).items() if k != "history"} for r in rows],
        "torch_threads": torch.get_num_threads(),
        "device": str(dev),
        "total_seconds": time.perf_counter() - start,
    }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    if args.results:
        Path(args.results).write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nresults: {out / 'results.json'} ({results['total_seconds']:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
