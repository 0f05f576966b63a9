"""`kd3 distill`, `kd3 train-teacher`, `kd3 evaluate`, `kd3 export` and `kd3 models`.

The training flags are generated from distill.options (common.options); the work is
distill.stage's. torch is imported inside the command functions so that `kd3 --help` stays
fast.
"""

from __future__ import annotations

import argparse
import json
import sys

from common.options import add_flags, csv_list, from_args
from distill.options import (
    DISTILL_METHODS,
    EPOCH_SIZES,
    METHOD_TEXT,
    DistillOptions,
    EvaluateOptions,
    TeacherOptions,
    TrainOptions,
)

# For parsers not generated from DistillOptions (argparse help: % escaped).
METHOD_HELP = "method (default %(default)s): " + METHOD_TEXT.replace("%", "%%")
__all__ = ["DISTILL_METHODS", "EPOCH_SIZES", "METHOD_HELP", "register"]

DISTILL_EXAMPLES = """examples:
  kd3 distill --teacher teacher.pt --pool pools/pets --eval test.npz --out runs/pets
  kd3 distill --teacher teacher.pt --pool pools/pets --method kd --epochs 40 --out runs/kd
  kd3 distill --teacher teacher.pt --pool pools/pets --class-map kitty=cat --out runs/pets
  kd3 distill --teacher resnet18.pth --arch resnet18 --class-names cat,dog \\
      --pool pools/pets --student mobilenetv2 --out runs/pets  # a bare state_dict
  kd3 distill --teacher teacher.pt --pool pools/pets --out runs/pets --resume

The pool's classes (classes.json) and the evaluation set's must be among the teacher's, by
name; a subset or another order is mapped onto the teacher's classes (one line says so),
anything else is refused before any work. Writes OUT/student.pt, OUT/metrics.jsonl,
OUT/report.png and OUT/state.pt (to --resume from)."""

TEACHER_EXAMPLES = """examples:
  kd3 train-teacher --data train.npz --eval test.npz --out teachers/c10
  kd3 train-teacher --data pools/pets --arch resnet18 --input-size 64 --epochs 60 --out t

Trains one class per class name of the data (its class_names, or a pool's classes.json).
Writes OUT/teacher.pt, OUT/metrics.jsonl, OUT/report.png and OUT/state.pt."""

EVALUATE_EXAMPLES = """examples:
  kd3 evaluate runs/pets/student.pt --eval test.npz
  kd3 evaluate resnet18.pth --arch resnet18 --eval pools/pets-test --json"""

EXPORT_EXAMPLES = """examples:
  kd3 export runs/pets/student.pt --out export/pets
  kd3 export runs/pets/student.pt --out export/pets --format onnx

The exported graph takes float32 RGB in [0, 1] at the checkpoint's input size (normalisation
included); OUT/model.json records the class names, input size and normalisation."""

MODELS_EXAMPLES = """example:
  kd3 models          # then: kd3 distill ... --student NAME"""


def _parser(subparsers, name: str, description: str, epilog: str):
    return subparsers.add_parser(
        name,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _floats3(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 3:
        raise argparse.ArgumentTypeError("expected three comma-separated numbers (R,G,B)")
    return values


def add_model_loading(parser, flag: str) -> None:
    """How to read a bare state_dict (a kd3 checkpoint carries all of this itself)."""
    group = parser.add_argument_group("bare state_dict checkpoints (kd3 checkpoints need none)")
    group.add_argument(
        "--arch",
        dest=f"{flag}_arch",
        metavar="ARCH",
        help="its architecture (kd3 models lists them) (default: none; required for a bare "
        "state_dict)",
    )
    group.add_argument(
        "--num-classes",
        dest=f"{flag}_num_classes",
        type=int,
        metavar="N",
        help="its number of classes (default: read from its classifier's weight)",
    )
    group.add_argument(
        "--class-names",
        dest=f"{flag}_class_names",
        type=csv_list,
        metavar="A,B",
        help="its class names, in output order (default: none; then data must match it by "
        "class count)",
    )
    group.add_argument(
        "--mean",
        dest=f"{flag}_mean",
        type=_floats3,
        metavar="R,G,B",
        help="input normalisation mean, in [0, 1] (default: ImageNet's)",
    )
    group.add_argument(
        "--std",
        dest=f"{flag}_std",
        type=_floats3,
        metavar="R,G,B",
        help="input normalisation std (default: ImageNet's)",
    )
    group.add_argument(
        "--input-size",
        dest=f"{flag}_input_size",
        type=int,
        metavar="PX",
        help="image size it expects (default: the architecture's)",
    )


def model_loading_kwargs(args, flag: str) -> dict:
    names = ("arch", "num_classes", "class_names", "mean", "std", "input_size")
    return {name: getattr(args, f"{flag}_{name}") for name in names}


def _add_run(parser, data_help: str) -> None:
    parser.add_argument("--eval", metavar="POOL|NPZ", help=data_help)
    parser.add_argument("--out", required=True, metavar="DIR", help="the run's folder")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run saved in --out, with the same settings (default: off; a "
        "folder that holds a run is refused without it)",
    )


def register(subparsers) -> None:
    training = list(TrainOptions.model_fields)
    d = _parser(
        subparsers,
        "distill",
        "Distil a teacher checkpoint into a small student on a pool of unlabelled images.",
        DISTILL_EXAMPLES,
    )
    d.add_argument("--teacher", required=True, metavar="CKPT", help="the teacher checkpoint")
    src = d.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--pool", metavar="POOL|NPZ", help="the images to distil on: a pool directory (its "
        "kept images) or an .npz"
    )  # fmt: skip
    src.add_argument("--pool-npz", metavar="NPZ", help="the same as --pool, for an .npz")
    _add_run(d, "labelled evaluation data, a pool or an .npz (default: none)")
    method = [name for name in DistillOptions.model_fields if name not in training]
    method.remove("class_map")
    add_flags(d, DistillOptions, exclude=_others(DistillOptions, method), title="method and KD3")
    add_flags(d, DistillOptions, exclude=_others(DistillOptions, training), title="training")
    add_flags(d, DistillOptions, exclude=_others(DistillOptions, ["class_map"]), title="classes")
    add_model_loading(d, "teacher")
    d.set_defaults(func=cmd_distill)

    t = _parser(
        subparsers, "train-teacher", "Train a classifier on labelled images.", TEACHER_EXAMPLES
    )
    t.add_argument(
        "--data", required=True, metavar="POOL|NPZ", help="labelled training data, a pool or "
        "an .npz"
    )  # fmt: skip
    _add_run(t, "labelled evaluation data; its classes must be among the data's (default: none)")
    add_flags(t, TeacherOptions, exclude=tuple(training), title="model")  # arch, input size
    add_flags(t, TeacherOptions, exclude=_others(TeacherOptions, training), title="training")
    t.set_defaults(func=cmd_train_teacher)

    e = _parser(
        subparsers,
        "evaluate",
        "Accuracy of a checkpoint on labelled data, overall and per class.",
        EVALUATE_EXAMPLES,
    )
    e.add_argument("checkpoint", metavar="CKPT", help="a kd3 checkpoint or a bare state_dict")
    e.add_argument(
        "--eval", required=True, metavar="POOL|NPZ", help="labelled data, a pool or an .npz"
    )
    e.add_argument(
        "--json", action="store_true", help="print JSON instead of a table (default: off)"
    )
    add_flags(e, EvaluateOptions)
    add_model_loading(e, "model")
    e.set_defaults(func=cmd_evaluate)

    x = _parser(
        subparsers,
        "export",
        "Write TorchScript and ONNX files of a checkpoint, normalisation included.",
        EXPORT_EXAMPLES,
    )
    x.add_argument("checkpoint", metavar="CKPT", help="a kd3 checkpoint or a bare state_dict")
    x.add_argument("--out", required=True, metavar="DIR", help="folder for the exported files")
    x.add_argument(
        "--format",
        default="torchscript,onnx",
        metavar="A,B",
        help="torchscript, onnx or both (default: %(default)s)",
    )
    add_model_loading(x, "model")
    x.set_defaults(func=cmd_export)

    m = _parser(
        subparsers,
        "models",
        "List the architectures of the model zoo and the image size each is meant for.",
        MODELS_EXAMPLES,
    )
    m.set_defaults(func=cmd_models)


def _others(model, names: list[str]) -> tuple[str, ...]:
    """`model`'s fields other than `names`."""
    return tuple(name for name in model.model_fields if name not in names)


def _threads() -> None:
    import os

    import torch

    if "KD3_TORCH_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["KD3_TORCH_THREADS"]))


def cmd_distill(args: argparse.Namespace) -> int:
    options = from_args(DistillOptions, args, "bad option")
    from distill.stage import run_distill

    _threads()
    result = run_distill(
        options,
        teacher=args.teacher,
        pool=args.pool or args.pool_npz,
        out=args.out,
        eval_set=args.eval,
        teacher_load=model_loading_kwargs(args, "teacher"),
        resume=args.resume,
        progress=sys.stderr.isatty(),
    )
    _print_done(result)
    return 0


def cmd_train_teacher(args: argparse.Namespace) -> int:
    options = from_args(TeacherOptions, args, "bad option")
    from distill.stage import train_teacher

    _threads()
    result = train_teacher(
        options,
        data=args.data,
        out=args.out,
        eval_set=args.eval,
        resume=args.resume,
        progress=sys.stderr.isatty(),
    )
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
    options = from_args(EvaluateOptions, args, "bad option")
    from distill.stage import evaluate_checkpoint

    _threads()
    acc, meta = evaluate_checkpoint(
        options,
        checkpoint=args.checkpoint,
        eval_set=args.eval,
        model_load=model_loading_kwargs(args, "model"),
        progress=sys.stderr.isatty(),
    )
    names = meta.class_names or [str(i) for i in range(meta.num_classes)]
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
    written = export_checkpoint(
        args.checkpoint, args.out, formats, **model_loading_kwargs(args, "model")
    )
    for kind, path in written.items():
        print(f"{kind}: {path}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from distill.models import DEFAULT_INPUT_SIZE, model_names

    for name in model_names():
        print(f"{name:<20} input {DEFAULT_INPUT_SIZE[name]}")
    return 0
