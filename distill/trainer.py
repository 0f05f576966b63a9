"""One trainer for every method (distill/methods: kd3, kd3-paper, kd, dfnd, random, supervised).

Each epoch: the method chooses the images to train on (KD3's selection pass, DFND's/random's
fixed subset, or all), the trainer trains on them in shuffled batches with batched tensor
augmentation and the method's loss, evaluates, then
write OUT/state.pt (everything needed to resume) and OUT/metrics.jsonl. Every random draw of
epoch e comes from generators seeded with (seed, e), so a run resumed from the checkpoint of
epoch e continues exactly as the uninterrupted run would have.

A `step_callback(event: dict)` is called after every step ({"event": "step", ...}) and epoch
({"event": "epoch", "metrics": ...}); if it returns True, training stops with
TrainingCancelled (the last epoch checkpoint stays, so the run can be resumed).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from pydantic import ValidationError
from torch import nn
from tqdm import tqdm

from common.files import atomic_write
from common.options import describe
from distill import diagnostics
from distill.checkpoints import ModelMeta, atomic_save, read_checkpoint_file, save_model
from distill.data import ImageSet, Normalizer, check_classes
from distill.distributed import Ranks
from distill.errors import DistillError, TrainingCancelled
from distill.evaluation import (
    Accuracy,
    autocast_for,
    evaluate,
    inference_batch_size,
    predict_logits,
)
from distill.methods import Context, method_class
from distill.models import create_model
from distill.options import (  # noqa: F401  (re-exported)
    AUGMENTS,
    EPOCH_SIZES,
    SCHEDULES,
    DistillOptions,
    TeacherOptions,
    TrainOptions,
)

# Defaults of the fields a method's recipe may set (distill/methods), where it sets none.
RECIPE_FIELDS = {
    "augment": "padcrop",
    "crop_scale": (0.35, 1.0),
    "selection_rule": "paper",
    "kd_weight": 0.0,
    "share_floor": 0.0,
    "epoch_size": "selection",
    "mixing": True,
}
# Options that are no training settings: where to train, and how data meets the model.
NOT_CONFIG = ("device", "class_map", "arch", "input_size", "memory_budget", "processes")
STATE_FILE = "state.pt"  # in a run's folder: everything needed to resume it
LOGITS_ON_DEVICE = 1 << 30  # bytes of the teacher's pool logits kept on the training device


def _default(name: str):
    """The default of option `name`, from the one place defaults live (distill.options)."""
    return DistillOptions.model_fields[name].default


@dataclass
class TrainConfig:
    """One run's training settings, resolved: the method's recipe fills what the options left
    to it (None). Saved with every checkpoint; a resumed run must have the same. Build it with
    TrainConfig.from_options; TrainConfig(**fields) takes DistillOptions' defaults for the
    rest. distill/options.py describes every field."""

    method: str = _default("method")
    student: str = _default("student")
    epochs: int = _default("epochs")
    batch_size: int = _default("batch_size")
    lr: float = _default("lr")
    momentum: float = _default("momentum")
    weight_decay: float = _default("weight_decay")
    schedule: str = _default("schedule")
    nesterov: bool = _default("nesterov")
    seed: int = _default("seed")
    augment: str | None = _default("augment")
    crop_scale: tuple[float, float] | None = _default("crop_scale")
    selection: bool = _default("selection")
    sharing: bool = _default("sharing")
    mixing: bool | None = _default("mixing")
    selection_rule: str | None = _default("selection_rule")
    tau: float = _default("tau")
    tau_min: float = _default("tau_min")
    tau_max: float = _default("tau_max")
    gamma: float = _default("gamma")
    mix_alpha: float = _default("mix_alpha")
    nt_temperature: float = _default("nt_temperature")
    kd_weight: float | None = _default("kd_weight")
    share_floor: float | None = _default("share_floor")
    epoch_size: str | None = _default("epoch_size")
    kd_temperature: float = _default("kd_temperature")
    subset_fraction: float = _default("subset_fraction")
    dfnd_teacher_accuracy: float | None = _default("dfnd_teacher_accuracy")
    infer_batch_size: int | None = _default("infer_batch_size")
    bn_recalibration: int = _default("bn_recalibration")

    @classmethod
    def from_options(cls, options: TrainOptions) -> TrainConfig:
        """The config of `options`: DistillOptions, or TeacherOptions (the supervised method
        training `arch`)."""
        values = options.model_dump(exclude=set(NOT_CONFIG))
        if isinstance(options, TeacherOptions):
            values.update(method="supervised", student=options.arch)
        return cls(**values)

    def __post_init__(self):
        from distill.methods import method_class

        recipe = method_class(self.method).recipe
        for name, default in RECIPE_FIELDS.items():
            if getattr(self, name) is None:
                setattr(self, name, recipe.get(name, default))
        self.crop_scale = tuple(self.crop_scale)
        # The options models' bounds, for configs built directly (tests, benchmarks).
        model = TrainOptions if self.method == "supervised" else DistillOptions
        values = {k: v for k, v in self.to_dict().items() if k in model.model_fields}
        try:
            model.model_validate(values)
        except ValidationError as exc:
            raise DistillError(f"training settings: {describe(exc)}") from None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class RunResult:
    out_dir: Path
    history: list[dict] = field(default_factory=list)
    student_path: Path | None = None
    method_note: str = ""  # what ran, in one line (Trainer.method_note)

    @property
    def final(self) -> dict:
        return self.history[-1]


def pick_device(device=None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def dataset_stats(images, limit_bytes: int = 64 << 20) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1], from at most `limit_bytes` of images spread evenly
    over the set (20k images at 32 px)."""
    n, count = len(images), max(1, limit_bytes // math.prod(images.shape[1:]))
    pick = torch.linspace(0, n - 1, count).round().long().unique() if n > count else slice(None)
    x = images[pick].float().div_(255)
    return x.mean(dim=(0, 1, 2)).tolist(), x.std(dim=(0, 1, 2)).tolist()


class Trainer:
    """Loops, checkpoints and reports; the method (distill/methods) decides what to train on
    and the loss of a batch."""

    def __init__(
        self,
        cfg: TrainConfig,
        train_set: ImageSet,
        out_dir: str | Path,
        teacher: nn.Module | None = None,
        teacher_meta: ModelMeta | None = None,
        eval_set: ImageSet | None = None,
        num_classes: int | None = None,
        class_names: list[str] | None = None,
        device=None,
        step_callback: Callable[[dict], bool | None] | None = None,
        log: Callable[[str], None] | None = None,
        eval_every: int = 1,
        progress: bool | None = None,
        ranks: Ranks | None = None,
    ):
        self.cfg = cfg
        # one of several processes (distill.distributed), or the only one
        self.ranks = ranks = ranks or Ranks()
        self.eval_every = eval_every  # evaluate every k epochs, and always after the last
        self.out_dir = Path(out_dir)
        self.device = pick_device(device)
        self.step_callback = step_callback
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.progress = sys.stderr.isatty() if progress is None else progress  # tqdm bars
        method_cls = method_class(cfg.method)
        channels_last = True  # faster on GPUs and, measured here, ~1.4x on CPU as well
        if not method_cls.needs_teacher:
            if not train_set.has_labels:
                raise DistillError(f"{train_set.source}: supervised training needs labels ('y')")
            train_set = train_set.subset(train_set.labels >= 0)
            self.num_classes = num_classes or train_set.num_classes
            self.class_names = class_names or train_set.class_names
            mean, std = dataset_stats(train_set.images)
            self.input_size = int(train_set.images.shape[1])
            self.teacher = None
        else:
            if teacher is None or teacher_meta is None:
                raise DistillError(f"method {cfg.method} needs a teacher checkpoint")
            self.num_classes = teacher_meta.num_classes
            self.class_names = teacher_meta.class_names
            mean, std, self.input_size = (
                teacher_meta.mean,
                teacher_meta.std,
                teacher_meta.input_size,
            )
            self.teacher = teacher.to(self.device).eval()
            if channels_last:
                self.teacher = self.teacher.to(memory_format=torch.channels_last)
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        self.teacher_meta = teacher_meta
        self.mean, self.std = list(mean), list(std)
        if eval_set is not None:
            check_classes(eval_set, self.num_classes, self.class_names)
        self.train_set = train_set.to(self.device)
        if train_set.streamed:
            self.log(
                f"{train_set.source}: {train_set.images.nbytes / 2**20:,.0f} MiB decoded, over "
                f"the memory budget: streamed from {train_set.images.path}"
            )
        self.eval_set = eval_set.to(self.device) if eval_set is not None else None
        self.norm = Normalizer(mean, std, self.input_size, self.device, channels_last)
        self.infer_batch = cfg.infer_batch_size or inference_batch_size(self.device)

        ctx = Context(
            cfg, self.train_set, self.norm, self.num_classes, self.device, self.infer_batch,
            self.teacher, ranks=ranks,
        )  # fmt: skip
        self.method = method_cls(ctx)
        torch.manual_seed(cfg.seed)  # weight initialisation
        backbone = create_model(cfg.student, self.num_classes)
        self.student = self.method.build_student(backbone)
        modules = {"student": self.student, **self.method.extra_modules(backbone)}
        self.trainable = nn.ModuleDict(modules).to(self.device)
        if channels_last:
            self.trainable = self.trainable.to(memory_format=torch.channels_last)
        self.method.bind(self.trainable)
        self.batch_loss = self.method.loss
        if ranks.world > 1:  # the loss goes through DDP's forward, which syncs the gradients
            self.batch_loss = nn.parallel.DistributedDataParallel(
                BatchLoss(self.method, self.trainable),
                device_ids=[self.device] if self.device.type == "cuda" else None,
                find_unused_parameters=True,  # e.g. a KD3 student's unused own classifier
            )
        params = [p for p in self.trainable.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(
            params,
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            nesterov=cfg.nesterov,
        )
        self.run_info: dict = {}
        self.history: list[dict] = []
        self.start_epoch = 0

    def lr_at(self, progress: float) -> float:
        return lr_at(self.cfg, progress)

    # -- state ---------------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.out_dir / STATE_FILE

    def save_state(self) -> None:
        if not self.ranks.main:
            return
        atomic_save(
            {
                "epoch": len(self.history),
                "config": self.cfg.to_dict(),
                "trainable": self.trainable.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "history": self.history,
            },
            self.state_path,
        )
        lines = "".join(json.dumps(m) + "\n" for m in self.history)
        atomic_write(self.out_dir / "metrics.jsonl", lines.encode())

    def load_state(self) -> None:
        state = read_checkpoint_file(self.state_path)
        saved = state.get("config", {}) if isinstance(state, dict) else {}
        now = self.cfg.to_dict()
        saved["crop_scale"] = tuple(saved.get("crop_scale") or ())
        for f in dataclasses.fields(TrainConfig):  # a field added since: what it did then
            if f.name not in saved and f.default is not dataclasses.MISSING:
                saved[f.name] = RECIPE_FIELDS.get(f.name, f.default)
        diff = sorted(k for k in now if saved.get(k) != now[k])
        if diff:
            raise DistillError(
                f"{self.state_path}: cannot resume, settings differ from the saved run: "
                + ", ".join(f"{k}={saved.get(k)!r} (now {now[k]!r})" for k in diff)
            )
        self.trainable.load_state_dict(state["trainable"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.history = list(state["history"])
        self.start_epoch = int(state["epoch"])

    # -- main loop -----------------------------------------------------------------------------
    def run(self, resume: bool = False, final_name: str = "student.pt") -> RunResult:
        check_out_dir(self.out_dir, resume)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.state_path.exists():
            self.load_state()
            self.log(f"resuming after epoch {self.start_epoch} of {self.cfg.epochs}")
        if self.start_epoch < self.cfg.epochs:  # a finished run only writes its student again
            self.prepare()
        for epoch in range(self.start_epoch, self.cfg.epochs):
            metrics = self.run_epoch(epoch)
            self.history.append(metrics)
            self.save_state()
            self.log(format_epoch(metrics))
            self._callback({"event": "epoch", "metrics": metrics})
        result = RunResult(self.out_dir, self.history, self.out_dir / final_name)
        result.method_note = self.method_note()
        if not self.ranks.main:
            return result
        save_model(result.student_path, self.student, self.student_meta())
        try:
            from distill.report import write_report

            write_report(
                self.history, self.out_dir / "report.png", self.class_names, self.method_note()
            )
        except Exception as exc:  # the report is a convenience: never lose a finished run to it
            self.log(f"report not written: {type(exc).__name__}: {exc}")
        return result

    def method_note(self) -> str:
        """What ran, in one line: the method, its summary and the recipe fields it used."""
        cfg = self.cfg
        recipe = ", ".join(f"{k}={getattr(cfg, k)}" for k in RECIPE_FIELDS)
        return f"{cfg.method}: {self.method.summary} [{recipe}]"

    def prepare(self) -> None:
        """Before the first epoch: the teacher's view of the clean pool (once: DFND ranks by it,
        the robust selection reads it, and it says how well the pool covers each class)."""
        if self.teacher is not None:
            # A streamed pool's logits, or more than LOGITS_ON_DEVICE bytes of them, stay on
            # the host. With several ranks, each scores its shard of the pool and all gather.
            n = len(self.train_set)
            on_host = self.train_set.streamed or n * self.num_classes * 4 > LOGITS_ON_DEVICE
            start, stop = self.ranks.shard(n)
            logits = predict_logits(
                self.teacher,
                self.train_set.part(start, stop),
                self.norm,
                self.infer_batch,
                out_device="cpu" if on_host else None,
            )
            self.method.ctx.teacher_logits = self.ranks.gather(logits, len(self.train_set))
            cover = diagnostics.coverage(
                self.method.ctx.teacher_logits, self.class_names, self.train_set.labels
            )
            self.run_info["pool_coverage"] = cover
            if self.start_epoch == 0:
                for warning in cover["warnings"]:
                    self.log(f"warning: {warning}")
        self.run_info.update(self.method.prepare())

    def student_meta(self) -> ModelMeta:
        final = self.history[-1] if self.history else {}
        summary = {
            "method": self.cfg.method,
            "method_note": self.method_note(),
            "epochs": len(self.history),
            "eval_accuracy": final.get("eval_accuracy"),
            "best_eval_accuracy": max(
                (m["eval_accuracy"] for m in self.history if m.get("eval_accuracy") is not None),
                default=None,
            ),
            "train_source": self.train_set.source,
            "pool_warnings": final.get("pool_coverage", {}).get("warnings"),
        }
        shared = self.method.student_kind == "kd3-student"
        return ModelMeta(
            arch=self.cfg.student,
            num_classes=self.num_classes,
            class_names=self.class_names,
            input_size=self.input_size,
            mean=tuple(self.mean),
            std=tuple(self.std),
            kind=self.method.student_kind,
            teacher_arch=self.teacher_meta.arch if shared else None,
            summary={k: v for k, v in summary.items() if v is not None},
        )

    def _callback(self, event: dict) -> None:
        if self.step_callback is not None and self.step_callback(event):
            raise TrainingCancelled(f"cancelled at epoch {len(self.history) + 1}")

    def epoch_indices(self, epoch: int, gen: torch.Generator) -> tuple[torch.Tensor, dict]:
        """The method's choice, with per-class counts by pseudo-label (the method's, else the
        teacher's argmax on the clean image) and, for labelled pools, their precision."""
        indices, info = self.method.select(epoch, gen)
        pseudo = info.pop("pseudo_labels", None)
        logits = self.method.ctx.teacher_logits
        if pseudo is None and logits is not None:
            pseudo = logits.argmax(1).cpu()[indices]
        if pseudo is not None:
            c = self.num_classes
            info.setdefault("selected_per_class", torch.bincount(pseudo, minlength=c).tolist())
            labels = self.train_set.labels
            info.update(diagnostics.precision(labels, indices, pseudo, c))
        if self.cfg.epoch_size == "pool":
            indices = cycle_to(indices, len(self.train_set), gen)
        return indices, {**info, **self.run_info}

    # -- one epoch -----------------------------------------------------------------------------
    def run_epoch(self, epoch: int) -> dict:
        cfg = self.cfg
        seed = cfg.seed * 1_000_003 + epoch
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)  # dropout in torchvision heads
        start = time.perf_counter()
        ranks = self.ranks
        ranks.broadcast_buffers(self.trainable)  # one student votes, on every rank
        indices, info = self.epoch_indices(epoch, gen)
        select_seconds = time.perf_counter() - start
        # rank 0's order on every rank (a paper-rule vote drew each rank's own views)
        order = ranks.broadcast(indices[torch.randperm(len(indices), generator=gen)])
        # BN needs 2 images per batch (per rank); each rank trains on its part of every batch
        batches = [b for b in order.split(cfg.batch_size) if len(b) >= 2 * ranks.world]
        parts = [ranks.batch_part(b) for b in batches]
        if not ranks.main:  # its own augmentation draws, not rank 0's again
            gen = torch.Generator().manual_seed(seed * 1_000_003 + ranks.rank)
        if not batches:
            self.log(f"epoch {epoch + 1}: no image selected, nothing to train on this epoch")
        self.trainable.train()
        sums: dict[str, float] = {}
        bar = tqdm(
            parts, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not self.progress, leave=False
        )
        images = self.train_set.batches(parts, pin_memory=self.device.type == "cuda")
        for step, (idx, batch) in enumerate(zip(bar, images, strict=True)):
            lr = self.lr_at(epoch + step / len(batches))
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            terms = self.train_step(idx.to(self.device), batch, gen)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix(loss=f"{terms['loss']:.3f}")
            self._callback(
                {
                    "event": "step",
                    "epoch": epoch + 1,
                    "epochs": cfg.epochs,
                    "step": step + 1,
                    "steps": len(batches),
                    "loss": terms["loss"],
                }
            )
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        trained = sum(len(b) for b in batches)
        sums = ranks.sum(sums)  # each rank's mean over its part: their mean is the batch's
        metrics = {
            "epoch": epoch + 1,
            "lr": self.lr_at(epoch),
            "losses": {k: v / max(1, len(batches) * ranks.world) for k, v in sums.items()},
            **info,
            "steps": len(batches),
            "epoch_seconds": seconds,
            "selection_seconds": select_seconds,
            "images_per_second": trained / max(seconds, 1e-9),
        }
        if ranks.world > 1:
            metrics["processes"] = ranks.world
        last = epoch + 1 == cfg.epochs
        evaluating = self.eval_set is not None and (last or (epoch + 1) % self.eval_every == 0)
        evaluating = evaluating and ranks.main  # rank 0's student is the run's
        if cfg.bn_recalibration and (evaluating or last) and ranks.main:
            self.recalibrate_bn(order[: cfg.bn_recalibration])
        if evaluating:
            acc = evaluate(self.student, self.eval_set, self.norm, self.num_classes)
            metrics.update(eval_metrics(acc))
        return metrics

    def recalibrate_bn(self, indices: torch.Tensor) -> None:
        parts = self.train_set.batches(indices.split(self.cfg.batch_size))
        batches = (self.norm.eval(part) for part in parts)
        with autocast_for(self.device):
            torch.optim.swa_utils.update_bn(batches, self.student)

    def train_step(
        self, idx: torch.Tensor, images: torch.Tensor, gen: torch.Generator
    ) -> dict[str, float]:
        """One optimizer step on `images` (uint8), the pool images `idx`."""
        cfg = self.cfg
        x = self.norm.train(images, gen, cfg.crop_scale, augment=cfg.augment)
        with autocast_for(self.device):
            terms = self.batch_loss(x, idx, gen)
        loss = sum(terms.values())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        out = {k: float(v.detach()) for k, v in terms.items()}
        out["loss"] = float(loss.detach())
        return out


class BatchLoss(nn.Module):
    """A method's batch loss as a module over the trainable modules, for DDP to wrap."""

    def __init__(self, method, trainable: nn.ModuleDict):
        super().__init__()
        self.method = [method]  # a list: not registered as a submodule
        self.trainable = trainable

    def forward(self, x, idx, gen):
        return self.method[0].loss(x, idx, gen)


def check_out_dir(out_dir: str | Path, resume: bool) -> None:
    """A run's folder holds no run, unless it is to be resumed."""
    if not resume and (Path(out_dir) / STATE_FILE).exists():
        raise DistillError(
            f"{out_dir}: holds a run already; pass --resume to continue it or choose another --out"
        )


def cycle_to(indices: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """`size` indices drawn from `indices` without replacement, pass after pass (each in its own
    random order), so every index appears equally often, give or take one."""
    if len(indices) == 0 or len(indices) >= size:
        return indices
    passes = -(-size // len(indices))
    drawn = [indices[torch.randperm(len(indices), generator=gen)] for _ in range(passes)]
    return torch.cat(drawn)[:size]


def lr_at(cfg: TrainConfig, progress: float) -> float:
    """lr at fractional epoch `progress` in [0, E)."""
    if cfg.schedule == "cosine":
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * progress / cfg.epochs))
    if cfg.schedule == "onecycle":
        warm = 0.3 * cfg.epochs
        if progress < warm:
            return cfg.lr / 25 + (cfg.lr - cfg.lr / 25) * progress / warm
        done = (progress - warm) / (cfg.epochs - warm)
        return cfg.lr / 25e4 + 0.5 * (cfg.lr - cfg.lr / 25e4) * (1 + math.cos(math.pi * done))
    drops = sum(progress >= cfg.epochs * m / 240 for m in (150, 180, 210))
    return cfg.lr * 0.1**drops


def eval_metrics(acc: Accuracy) -> dict:
    return {"eval_accuracy": acc.overall, "eval_per_class": acc.per_class, "eval_count": acc.count}


def format_epoch(m: dict) -> str:
    parts = [f"epoch {m['epoch']}", f"loss {m['losses'].get('loss', 0.0):.4f}"]
    if "teacher_share" in m:
        parts.append(f"a_e {m['teacher_share']:.3f}")
    parts.append(f"selected {m['selected']}")
    if "selection_precision" in m:
        parts.append(f"precision {m['selection_precision']:.3f}")
    if "eval_accuracy" in m:
        parts.append(f"eval acc {m['eval_accuracy']:.4f}")
    parts.append(f"{m['epoch_seconds']:.1f} s ({m['images_per_second']:.0f} img/s)")
    return ", ".join(parts)
