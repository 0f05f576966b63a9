"""The distill stage's calls, shared by `kd3 distill` / `kd3 train-teacher` / `kd3 evaluate`
and the worker.

Each checks everything a user gave before any work: the options (their models), the
architecture, the output folder, then the class contract (distill.contract) between the model
and the datasets, from the teacher's metadata and the datasets' class names alone; only then
are images decoded (a pool is materialised) and training starts.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from distill.checkpoints import ModelMeta, load_model
from distill.contract import ClassInfo, match_classes
from distill.data import ImageSource, Normalizer, default_memory_budget
from distill.distributed import Ranks, launch
from distill.errors import DistillError
from distill.evaluation import Accuracy, evaluate
from distill.models import DEFAULT_INPUT_SIZE, check_arch
from distill.options import DistillOptions, EvaluateOptions, TeacherOptions
from distill.trainer import (
    STATE_FILE,
    RunResult,
    TrainConfig,
    Trainer,
    check_out_dir,
    pick_device,
)

PathLike = str | os.PathLike
OnEvent = Callable[[dict], bool | None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def saved_run(out: PathLike) -> bool:
    """Whether `out` holds a run that `resume=True` would continue."""
    return (Path(out) / STATE_FILE).exists()


def run_distill(
    options: DistillOptions,
    *,
    teacher: PathLike,
    pool: PathLike,
    out: PathLike,
    eval_set: PathLike | None = None,
    teacher_load: dict | None = None,
    resume: bool = False,
    progress: bool = False,
    on_event: OnEvent | None = None,
    log: Callable[[str], None] | None = None,
    ranks: Ranks | None = None,
) -> RunResult:
    """Distil the `teacher` checkpoint into `options.student` on `pool` (a pool directory or
    an .npz), evaluated on `eval_set`; writes OUT/student.pt, state.pt, metrics.jsonl and
    report.png, and returns the history with `method_note`.

    `teacher_load`: load_model's keywords for a bare state_dict (arch, num_classes, mean, std,
    input_size, class_names). `on_event` is called after every step and epoch (Trainer's
    step_callback); returning True stops with TrainingCancelled, the last epoch saved.
    `log` (default: stderr) gets the class-mapping note and the epoch lines.
    With options.processes > 1 the run is split over that many processes (distill.distributed);
    `ranks` is set in each of them."""
    log = log or _stderr
    check_arch(options.student)
    check_out_dir(out, resume)
    model, meta = load_model(teacher, **(teacher_load or {}))
    sources = {"pool": ImageSource(pool)}
    if eval_set is not None:
        sources["evaluation set"] = _labelled(ImageSource(eval_set))
    mappings = match_classes(
        ClassInfo("teacher", meta.class_names, meta.num_classes),
        [source.classes(what) for what, source in sources.items()],
        options.class_map,
    )
    if options.processes > 1 and ranks is None:  # checked here; trained by the ranks
        job = {"teacher": str(teacher), "pool": str(pool), "out": str(out), "resume": resume}
        job |= {"eval_set": None if eval_set is None else str(eval_set)}
        job |= {"teacher_load": teacher_load, "options": options.model_dump(mode="json")}
        return _run_ranks(options, job, Path(out), on_event, log)
    data = []
    for source, mapping in zip(sources.values(), mappings, strict=True):
        if mapping.note:
            log(mapping.note)
        loaded = source.load(meta.input_size, progress, memory_budget(options))
        data.append(loaded.mapped(mapping, meta.class_names))
    trainer = Trainer(
        TrainConfig.from_options(options),
        data[0],
        out,
        model,
        meta,
        data[1] if eval_set is not None else None,
        device=options.device,
        step_callback=on_event,
        log=log,
        progress=progress and (ranks is None or ranks.main),
        ranks=ranks,
    )
    return trainer.run(resume=resume)


def _run_ranks(options, job: dict, out: Path, on_event: OnEvent | None, log) -> RunResult:
    """run_distill on options.processes processes; the result as rank 0 wrote it."""
    import json

    gpus = torch.cuda.device_count()
    if pick_device(options.device).type == "cuda" and gpus < options.processes:
        raise DistillError(f"{options.processes} processes need as many GPUs; this host has {gpus}")

    def on_epoch(metrics: dict) -> bool:
        return bool(on_event and on_event({"event": "epoch", "metrics": metrics}))

    launch(job, out, options.processes, on_epoch, log)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    result = RunResult(out, [json.loads(line) for line in lines], out / "student.pt")
    result.method_note = load_model(result.student_path)[1].summary.get("method_note", "")
    return result


def train_teacher(
    options: TeacherOptions,
    *,
    data: PathLike,
    out: PathLike,
    eval_set: PathLike | None = None,
    resume: bool = False,
    progress: bool = False,
    on_event: OnEvent | None = None,
    log: Callable[[str], None] | None = None,
) -> RunResult:
    """Train `options.arch` on the labelled `data` (a pool directory or an .npz), one class
    per class name (also for names without images), evaluated on `eval_set`, whose classes
    must be among the data's by name; writes OUT/teacher.pt and the run files as
    run_distill."""
    log = log or _stderr
    check_arch(options.arch)
    check_out_dir(out, resume)
    source = ImageSource(data)
    if source.max_label() < 0:
        raise DistillError(f"{data}: supervised training needs labels ('y')")
    evaluation = _labelled(ImageSource(eval_set)) if eval_set is not None else None
    classes = replace(source.classes("training data"), what="training data")  # "... data's"
    mapping = None
    if evaluation is not None:
        (mapping,) = match_classes(classes, [evaluation.classes("evaluation set")], hint=None)
        if mapping.note:
            log(mapping.note)
    size = options.input_size
    if size is None and source.pool is not None:
        size = DEFAULT_INPUT_SIZE.get(options.arch, 32)
    train_set = source.load(size, progress, memory_budget(options))
    size = int(train_set.images.shape[1])  # an npz's own size when none was given
    eval_data = None
    if evaluation is not None:
        eval_data = evaluation.load(size, progress, memory_budget(options))
        eval_data = eval_data.mapped(mapping, train_set.class_names)
    trainer = Trainer(
        TrainConfig.from_options(options),
        train_set,
        out,
        eval_set=eval_data,
        num_classes=classes.count,
        device=options.device,
        step_callback=on_event,
        log=log,
        progress=progress,
    )
    return trainer.run(resume=resume, final_name="teacher.pt")


def evaluate_checkpoint(
    options: EvaluateOptions,
    *,
    checkpoint: PathLike,
    eval_set: PathLike,
    model_load: dict | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> tuple[Accuracy, ModelMeta]:
    """The accuracy of `checkpoint` on the labelled `eval_set`, whose classes must be among
    the model's (or renamed to them by options.class_map), and the model's metadata (a model
    without class names takes the evaluation set's, which matched it by count)."""
    model, meta = load_model(checkpoint, **(model_load or {}))
    source = _labelled(ImageSource(eval_set))
    (mapping,) = match_classes(
        ClassInfo("model", meta.class_names, meta.num_classes),
        [source.classes("evaluation set")],
        options.class_map,
        hint="give --class-map NAME=MODEL_NAME for classes named otherwise",
    )
    if mapping.note:
        (log or _stderr)(mapping.note)
    data = source.load(meta.input_size, progress).mapped(mapping, meta.class_names)
    if meta.class_names is None and data.class_names:  # matched by count: its names apply
        meta.class_names = list(data.class_names)
    device = pick_device(options.device)
    norm = Normalizer(meta.mean, meta.std, meta.input_size, device, channels_last=True)
    model = model.to(device, memory_format=torch.channels_last)
    with torch.no_grad():
        return evaluate(model, data.to(device), norm, meta.num_classes), meta


def memory_budget(options) -> int:
    """Bytes of decoded images a run holds in memory: the options', else the device's."""
    if options.memory_budget is not None:
        return int(options.memory_budget)
    return default_memory_budget(pick_device(options.device))


def _labelled(source: ImageSource) -> ImageSource:
    if source.max_label() < 0:
        raise DistillError(f"{source.path}: evaluation data needs labels ('y')")
    return source
