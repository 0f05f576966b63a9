"""Model checkpoints: kd3's own format, bare state_dicts and torchvision state_dicts.

kd3 format (a plain dict, loadable with torch.load(weights_only=True)):
    format: "kd3-model", version: 1
    kind: "classifier" | "kd3-student"
    arch, num_classes, class_names, input_size, mean, std, summary (dict of numbers/strings)
    teacher_arch (kd3-student only: the shared classifier and projector follow its shapes)
    state_dict
Checkpoint files are untrusted: they are only ever read with weights_only=True, after the sizes
their zip members inflate to are checked against a limit, and a model is only built from
metadata within bounds and loaded with finite weights.
"""

from __future__ import annotations

import math
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from common.files import atomic_write
from distill.data import check_size
from distill.errors import CheckpointError
from distill.models import DEFAULT_INPUT_SIZE, create_model, final_linear
from distill.options import MAX_INPUT_SIZE

FORMAT = "kd3-model"
VERSION = 1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# What torch.load may inflate a checkpoint to (the zoo's largest model, resnet50, is ~100 MB;
# a training state with its optimizer ~200 MB); $KD3_MAX_CHECKPOINT_BYTES overrides it.
CHECKPOINT_BYTES_ENV, CHECKPOINT_BYTES_DEFAULT = "KD3_MAX_CHECKPOINT_BYTES", 1 << 30
MAX_CLASSES = 100_000
KINDS = ("classifier", "kd3-student")


@dataclass
class ModelMeta:
    arch: str
    num_classes: int
    class_names: list[str] | None = None
    input_size: int = 32
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    kind: str = "classifier"
    teacher_arch: str | None = None
    summary: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "arch": self.arch,
            "num_classes": self.num_classes,
            "class_names": list(self.class_names) if self.class_names else None,
            "input_size": self.input_size,
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "kind": self.kind,
            "teacher_arch": self.teacher_arch,
            "summary": dict(self.summary),
        }


def build_model(meta: ModelMeta) -> nn.Module:
    """An untrained model with the shapes `meta` describes."""
    if meta.kind == "kd3-student":
        from distill.kd3 import SharedHeadStudent

        teacher = create_model(meta.teacher_arch, meta.num_classes)
        return SharedHeadStudent(create_model(meta.arch, meta.num_classes), teacher)
    return create_model(meta.arch, meta.num_classes)


def save_model(path: str | Path, model: nn.Module, meta: ModelMeta) -> None:
    body = {"format": FORMAT, "version": VERSION, **meta.to_dict()}
    body["state_dict"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_save(body, path)


def atomic_save(obj, path: str | Path) -> None:
    """torch.save, atomically and durably: a crash never leaves half a checkpoint."""
    atomic_write(path, lambda fh: torch.save(obj, fh), durable=True)


def read_checkpoint_file(path: str | Path) -> object:
    """torch.load with weights_only=True; any failure becomes a one-line CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    with open(path, "rb") as fh:
        head = fh.read(2)
    # torch.save writes a zip archive (b"PK"), older versions a pickle (protocol byte 0x80).
    if head != b"PK" and head[:1] != b"\x80":
        raise CheckpointError(_not_a_checkpoint(path, "unknown file type"))
    try:
        size = _inflated_size(path) if head == b"PK" else path.stat().st_size
        check_size(path, size, CHECKPOINT_BYTES_ENV, CHECKPOINT_BYTES_DEFAULT, CheckpointError)
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        reason = next((ln for ln in lines if "Unsupported" in ln or "global" in ln.lower()), None)
        reason = reason.split(". Please")[0] if reason else None
        if reason is None:
            raise CheckpointError(_not_a_checkpoint(path, "unreadable pickle")) from None
        raise CheckpointError(
            f"{path}: refused to load: it holds objects other than tensors and plain data "
            f"({reason[:160]})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise CheckpointError(_not_a_checkpoint(path, type(exc).__name__)) from None


def _inflated_size(path: Path) -> int:
    """The uncompressed size of a zip's members (torch.save stores them uncompressed, but
    torch.load inflates compressed ones too)."""
    with zipfile.ZipFile(path) as archive:
        return sum(info.file_size for info in archive.infolist())


def _not_a_checkpoint(path, why: str) -> str:
    return (
        f"{path}: not a PyTorch checkpoint ({why}); expected a file written by torch.save "
        "holding a kd3 checkpoint or a state_dict"
    )


def load_model(
    path: str | Path,
    arch: str | None = None,
    num_classes: int | None = None,
    mean=None,
    std=None,
    input_size: int | None = None,
    class_names: list[str] | None = None,
) -> tuple[nn.Module, ModelMeta]:
    """Load a kd3 checkpoint, or a bare / {'state_dict': ...} / torchvision state_dict given
    `arch`. Returns the model in eval mode (on the CPU) and its metadata."""
    body = read_checkpoint_file(path)
    if isinstance(body, dict) and body.get("format") == FORMAT:
        version = body.get("version", 0)
        if not isinstance(version, int) or version > VERSION:
            raise CheckpointError(f"{path}: kd3 checkpoint version {version!r} is not supported")
        meta = _meta_from_body(path, body)
        if arch is not None and arch != meta.arch:
            raise CheckpointError(f"{path}: checkpoint holds a {meta.arch}, not the {arch} given")
        state = _bare_state_dict(path, body.get("state_dict"))
    else:
        state = _bare_state_dict(path, body)
        if arch is None:
            raise CheckpointError(
                f"{path}: a bare state_dict carries no architecture; pass --arch "
                "(one of the names `kd3 models` lists)"
            )
        if num_classes is None:
            num_classes = _infer_num_classes(arch, state)
        meta = ModelMeta(
            arch=arch,
            num_classes=num_classes,
            class_names=class_names,
            input_size=input_size or DEFAULT_INPUT_SIZE.get(arch, 32),
            mean=tuple(mean or IMAGENET_MEAN),
            std=tuple(std or IMAGENET_STD),
        )
    if class_names is not None and len(class_names) != meta.num_classes:
        raise CheckpointError(
            f"{path}: {len(class_names)} class names given for a {meta.num_classes}-class model"
        )
    _check_meta(path, meta)
    model = build_model(meta)
    _load_state(path, model, state, meta)
    model.eval()
    return model, meta


def _meta_from_body(path, body: dict) -> ModelMeta:
    try:
        return ModelMeta(
            arch=str(body["arch"]),
            num_classes=int(body["num_classes"]),
            class_names=list(body["class_names"]) if body.get("class_names") else None,
            input_size=int(body["input_size"]),
            mean=tuple(float(v) for v in body["mean"]),
            std=tuple(float(v) for v in body["std"]),
            kind=str(body.get("kind", "classifier")),
            teacher_arch=body.get("teacher_arch"),
            summary=dict(body.get("summary") or {}),
        )
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise CheckpointError(f"{path}: kd3 checkpoint metadata is incomplete ({exc})") from None


def _check_meta(path, meta: ModelMeta) -> None:
    """Metadata a model can be built from and its inputs normalised with."""
    problems = []
    if meta.kind not in KINDS:
        problems.append(f"kind {meta.kind!r} is not one of {', '.join(KINDS)}")
    if not 1 <= meta.num_classes <= MAX_CLASSES:
        problems.append(f"num_classes {meta.num_classes} is not in 1..{MAX_CLASSES}")
    names = meta.class_names
    if names is not None and (
        len(names) != meta.num_classes or not all(isinstance(n, str) for n in names)
    ):
        problems.append(f"class_names must be {meta.num_classes} strings, one per class")
    if not 1 <= meta.input_size <= MAX_INPUT_SIZE:
        problems.append(f"input_size {meta.input_size} is not in 1..{MAX_INPUT_SIZE}")
    mean, std = list(meta.mean), list(meta.std)
    if len(mean) != 3 or len(std) != 3 or not all(math.isfinite(v) for v in mean + std):
        problems.append(f"mean {mean} and std {std} must be three finite numbers each")
    elif min(std) <= 0:
        problems.append(f"std {std} must be positive")
    if problems:
        raise CheckpointError(f"{path}: unusable model metadata: {'; '.join(problems)}")


def _bare_state_dict(path, body) -> dict:
    if isinstance(body, dict) and isinstance(body.get("state_dict"), dict):
        body = body["state_dict"]
    if (
        not isinstance(body, dict)
        or not body
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in body.items())
    ):
        raise CheckpointError(
            f"{path}: not a checkpoint: expected a kd3 checkpoint, a state_dict (names -> tensors)"
            " or {'state_dict': ...}"
        )
    if all(k.startswith("module.") for k in body):  # saved from DataParallel
        body = {k[len("module.") :]: v for k, v in body.items()}
    return body


def _infer_num_classes(arch: str, state: dict) -> int:
    probe = create_model(arch, 2)
    names = {id(p): n for n, p in probe.named_parameters()}
    key = names[id(final_linear(probe).weight)]
    if key not in state or state[key].ndim != 2:
        raise CheckpointError(
            f"state_dict does not fit {arch}: it has no 2-D '{key}' (the classifier weight)"
        )
    return int(state[key].shape[0])


def _load_state(path, model: nn.Module, state: dict, meta: ModelMeta) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        what = f"{meta.arch} with {meta.num_classes} classes"
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (e.g. {shapes[0]})")
        raise CheckpointError(f"{path}: weights do not fit {what}: {'; '.join(parts)}")
    bad = [k for k, v in state.items() if v.is_floating_point() and not v.isfinite().all()]
    if bad:
        raise CheckpointError(
            f"{path}: {len(bad)} weight tensors hold NaN or infinite values (e.g. {bad[0]})"
        )
    model.load_state_dict(state)
