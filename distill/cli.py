"""`kd3 distill`, `kd3 train-teacher`, `kd3 evaluate`, `kd3 export` and `kd3 models`.

torch is imported inside the command functions so that `kd3 --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _floats3(text: str) -> list[float]:
    values = [float(v) for v in text.split(",")]
    if len(values) != 3:
        raise argparse.ArgumentTypeError("expected three comma-separated numbers (R,G,B)")
    return values


def _add_teacher_loading(parser, flag: str) -> None:
    group = parser.add_argument_group("bare state_dict checkpoints (kd3 checkpoints need none)")
    group.add_argument("--arch", dest=f"{flag}_arch", help="architecture of a bare state_dict")
    group.add_argument("--num-classes", dest=f"{flag}_num_classes", type=int)
    group.add_argument("--mean", dest=f"{flag}_mean", type=_floats3, metavar="R,G,B")
    group.add_argument("--std", dest=f"{flag}_std", type=_floats3, metavar="R,G,B")
    group.add_argument("--input-size", dest=f"{flag}_input_size", type=int)


def _load_kwargs(args, flag: str) -> dict:
    return {
        "arch": getattr(args, f"{flag}_arch"),
        "num_classes": getattr(args, f"{flag}_num_classes"),
        "mean": getattr(args, f"{flag}_mean"),
        "std": getattr(args, f"{flag}_std"),
        "input_size": getattr(args, f"{flag}_input_size"),
    }


# The distillation methods (distill/methods; a test checks this list against the registry,
# kept here so that `kd3 --help` does not import torch).
DISTILL_METHODS = ("kd3", "kd3-paper", "kd", "dfnd", "random")
EPOCH_SIZES = ("selection", "pool")  # distill.trainer.EPOCH_SIZES, checked by the same test
METHOD_HELP = """method (default %(default)s):
kd3 = KD3 with the recipe chosen on validation runs: dynamic selection and classifier sharing
(feature alignment), deviating from the paper in: epochs as long as the pool (the selected
images are cycled, so selection does not halve the optimizer steps); no MixDistribution /
contrastive term (--mixing puts it back); pad-4 random crop + flip instead of
RandomResizedCrop(0.08-1); a Hinton KD term (T=4, weight 1) on the shared head's logits; the
robust selection rule (teacher share >= 0.5, class thresholds clamped to [0.5, 0.8], selection
on clean views, at least 10%% of the pool kept);
kd3-paper = the paper's released recipe (all three components, RandomResizedCrop(0.08-1),
feature alignment only, FlexMatch thresholds, teacher share ramping to 0 at E/2, one pass
over the selection per epoch); kd = Hinton KD on the whole pool;
dfnd = KD + noise adaptation on the teacher's most confident half; random = KD on a random half"""


def _add_training(
    parser, epochs: int, lr: float, batch_size: int, schedule: str, nesterov: bool
) -> None:
    t = parser.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=epochs, help="default %(default)s")
    t.add_argument("--batch-size", type=int, default=batch_size, help="default %(default)s")
    t.add_argument("--lr", type=float, default=lr, help="peak learning rate, default %(default)s")
    t.add_argument("--weight-decay", type=float, default=5e-4, help="default %(default)s")
    t.add_argument(
        "--schedule",
        choices=("cosine", "step", "onecycle"),
        default=schedule,
        help="lr schedule, default %(default)s",
    )
    t.add_argument(
        "--nesterov",
        action=argparse.BooleanOptionalAction,
        default=nesterov,
        help="SGD with Nesterov momentum (default %(default)s)",
    )
    t.add_argument(
        "--augment",
        choices=("rrc", "padcrop"),
        help="padcrop: pad-4 random crop + flip; rrc: RandomResizedCrop + flip "
        "(default: the method's; padcrop for all but kd3-paper)",
    )
    t.add_argument(
        "--crop-scale-min", type=float, help="rrc's smallest crop area (default: the method's)"
    )
    t.add_argument(
        "--bn-recalibration",
        type=int,
        default=0,
        metavar="N",
        help="re-estimate BatchNorm statistics on N training images before each evaluation "
        "and at the end (default 0: off)",
    )
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    t.add_argument("--out", required=True, metavar="DIR")
    t.add_argument("--resume", action="store_true", help="continue the run saved in --out")


def register(subparsers) -> None:
    d = subparsers.add_parser("distill", help="distil a teacher checkpoint into a student")
    d.add_argument("--teacher", required=True, metavar="CKPT")
    src = d.add_mutually_exclusive_group(required=True)
    src.add_argument("--pool", metavar="POOL", help="pool directory (its kept images)")
    src.add_argument("--pool-npz", metavar="NPZ", help="images in an .npz ('x' or JPEG form)")
    d.add_argument("--student", default="resnet8", metavar="ARCH")
    d.add_argument("--method", default="kd3", choices=DISTILL_METHODS, help=METHOD_HELP)
    d.add_argument("--eval", metavar="POOL|NPZ", help="labelled evaluation data")
    _add_training(d, epochs=20, lr=0.05, batch_size=256, schedule="cosine", nesterov=False)
    k = d.add_argument_group("KD3 components and settings (default: the method's recipe)")
    k.add_argument("--no-selection", action="store_true", help="train on the whole pool")
    k.add_argument("--no-sharing", action="store_true", help="own classifier + KD instead of WFA")
    k.add_argument(
        "--mixing",
        action=argparse.BooleanOptionalAction,
        help="MixDistribution + contrastive term (kd3: off; kd3-paper: on)",
    )
    k.add_argument(
        "--selection-rule", choices=("paper", "robust"), help="kd3: robust; kd3-paper: paper"
    )
    k.add_argument("--tau", type=float, default=0.95, help="FlexMatch tau, default %(default)s")
    k.add_argument("--tau-min", type=float, default=0.5, help="robust rule: threshold floor")
    k.add_argument("--tau-max", type=float, default=0.8, help="robust rule: threshold cap")
    k.add_argument("--gamma", type=float, default=0.001, help="contrastive weight")
    k.add_argument("--kd-weight", type=float, help="KD term on the shared head (kd3: 1)")
    k.add_argument("--share-floor", type=float, help="floor under the teacher share (kd3: 0.5)")
    k.add_argument(
        "--epoch-size",
        choices=EPOCH_SIZES,
        help="selection: one pass over the selected images; pool: cycle them to the pool's size",
    )
    k.add_argument("--subset-fraction", type=float, default=0.5, help="DFND/random subset size")
    _add_teacher_loading(d, "teacher")
    d.set_defaults(func=cmd_distill)

    t = subparsers.add_parser("train-teacher", help="train a classifier on labelled data")
    t.add_argument("--data", required=True, metavar="POOL|NPZ", help="labelled training data")
    t.add_argument("--arch", default="resnet20", metavar="ARCH")
    t.add_argument("--eval", metavar="POOL|NPZ")
    t.add_argument(
        "--input-size", type=int, help="image size (default: an npz's own, else the arch's)"
    )
    _add_training(t, epochs=30, lr=0.2, batch_size=128, schedule="onecycle", nesterov=True)
    t.set_defaults(func=cmd_train_teacher)

    e = subparsers.add_parser("evaluate", help="accuracy of a checkpoint on labelled data")
    e.add_argument("checkpoint", metavar="CKPT")
    e.add_argument("--eval", required=True, metavar="POOL|NPZ")
    e.add_argument("--device")
    e.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_teacher_loading(e, "model")
    e.set_defaults(func=cmd_evaluate)

    x = subparsers.add_parser("export", help="write TorchScript and ONNX files of a checkpoint")
    x.add_argument("checkpoint", metavar="CKPT")
    x.add_argument("--out", required=True, metavar="DIR")
    x.add_argument("--format", default="torchscript,onnx", help="torchscript, onnx or both")
    _add_teacher_loading(x, "model")
    x.set_defaults(func=cmd_export)

    m = subparsers.add_parser("models", help="list the architectures of the model zoo")
    m.set_defaults(func=cmd_models)


def _threads() -> None:
    import os

    import torch

    if "KD3_TORCH_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["KD3_TORCH_THREADS"]))


def _training(args: argparse.Namespace) -> dict:
    """The TrainConfig fields every training command shares (see _add_training)."""
    return {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "schedule": args.schedule,
        "nesterov": args.nesterov,
        "seed": args.seed,
        "bn_recalibration": args.bn_recalibration,
        "augment": args.augment,
        "crop_scale": None if args.crop_scale_min is None else (args.crop_scale_min, 1.0),
    }


def cmd_distill(args: argparse.Namespace) -> int:
    from distill.checkpoints import load_model
    from distill.data import check_classes, load_images
    from distill.trainer import TrainConfig, Trainer

    _threads()
    teacher, meta = load_model(args.teacher, **_load_kwargs(args, "teacher"))
    progress = sys.stderr.isatty()
    pool = load_images(args.pool or args.pool_npz, meta.input_size, progress)
    check_classes(pool, meta.num_classes, need_labels=False)  # its labels feed the diagnostics
    eval_set = load_images(args.eval, meta.input_size, progress) if args.eval else None
    cfg = TrainConfig(
        method=args.method,
        student=args.student,
        **_training(args),
        selection=not args.no_selection,
        sharing=not args.no_sharing,
        mixing=args.mixing,
        selection_rule=args.selection_rule,
        tau=args.tau,
        tau_min=args.tau_min,
        tau_max=args.tau_max,
        gamma=args.gamma,
        kd_weight=args.kd_weight,
        share_floor=args.share_floor,
        epoch_size=args.epoch_size,
        subset_fraction=args.subset_fraction,
    )
    trainer = Trainer(cfg, pool, args.out, teacher, meta, eval_set, device=args.device)
    result = trainer.run(resume=args.resume)
    _print_done(result)
    return 0


def cmd_train_teacher(args: argparse.Namespace) -> int:
    from distill.data import load_images
    from distill.models import DEFAULT_INPUT_SIZE
    from distill.trainer import TrainConfig, Trainer

    _threads()
    size = args.input_size
    if size is None and Path(args.data).is_dir():
        size = DEFAULT_INPUT_SIZE.get(args.arch, 32)
    data = load_images(args.data, size, sys.stderr.isatty())
    size = data.images.shape[1]
    eval_set = load_images(args.eval, size) if args.eval else None
    cfg = TrainConfig(method="supervised", student=args.arch, **_training(args))
    # One class per class name, also when the last classes have no images.
    trainer = Trainer(
        cfg, data, args.out, eval_set=eval_set, num_classes=data.num_classes, device=args.device
    )
    result = trainer.run(resume=args.resume, final_name="teacher.pt")
    _print_done(result)
    return 0


def _print_done(result) -> None:
    final = result.final
    acc = final.get("eval_accuracy")
    best = max((m.get("eval_accuracy") or 0 for m in result.history), default=0)
    line = f"wrote {result.student_path}"
    if acc is not None:
        line += f"; final-epoch accuracy {acc:.4f} (best epoch {best:.4f})"
    print(line)
    for warning in final.get("pool_coverage", {}).get("warnings", []):
        print(f"warning: {warning}")


def cmd_evaluate(args: argparse.Namespace) -> int:
    import torch

    from distill.checkpoints import load_model
    from distill.data import Normalizer, check_classes, load_images
    from distill.evaluation import evaluate
    from distill.trainer import pick_device

    _threads()
    model, meta = load_model(args.checkpoint, **_load_kwargs(args, "model"))
    data = load_images(args.eval, meta.input_size)
    check_classes(data, meta.num_classes, meta.class_names)
    device = pick_device(args.device)
    norm = Normalizer(meta.mean, meta.std, meta.input_size, device, channels_last=True)
    model = model.to(device, memory_format=torch.channels_last)
    with torch.no_grad():
        acc = evaluate(model, data.to(device), norm, meta.num_classes)
    names = meta.class_names or data.class_names or [str(i) for i in range(meta.num_classes)]
    if args.json:
        per_class = dict(zip(names, acc.per_class, strict=True))
        print(json.dumps({"accuracy": acc.overall, "count": acc.count, "per_class": per_class}))
        return 0
    print(f"accuracy {acc.overall:.4f} on {acc.count} images ({meta.arch}, {args.eval})")
    for name, value in zip(names, acc.per_class, strict=True):
        print(f"  {name:<20} {'-' if value is None else f'{value:.4f}'}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from distill.errors import DistillError
    from distill.export import export_checkpoint

    formats = tuple(f.strip() for f in args.format.split(","))
    bad = set(formats) - {"torchscript", "onnx"}
    if bad:
        raise DistillError(f"unknown export format {sorted(bad)}; use torchscript and/or onnx")
    written = export_checkpoint(args.checkpoint, args.out, formats, **_load_kwargs(args, "model"))
    for kind, path in written.items():
        print(f"{kind}: {path}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from distill.models import DEFAULT_INPUT_SIZE, model_names

    for name in model_names():
        print(f"{name:<20} input {DEFAULT_INPUT_SIZE[name]}")
    return 0
