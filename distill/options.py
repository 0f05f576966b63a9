"""The options of kd3's training commands: the one place their defaults, bounds and help live.

`kd3 distill` and `kd3 train-teacher` build their flags from these models (common.options),
the pipeline config's `distill:` section and the distill job spec subclass DistillOptions (its
field names are the config keys), and distill.stage.run_distill / train_teacher take them.
distill.trainer.TrainConfig is built from them (TrainConfig.from_options). None means "the
method's recipe decides" (distill/methods: each method's `recipe`).

Light imports only (stdlib, pydantic): `kd3 --help` reads this module.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ByteSize, Field, model_validator

# Names only; distill.methods implements them (tests/distill check that the lists agree).
DISTILL_METHODS = ("kd3", "kd3-paper", "kd", "dfnd", "random")
SCHEDULES = ("cosine", "step", "onecycle")
AUGMENTS = ("rrc", "padcrop")
SELECTION_RULES = ("paper", "robust")
EPOCH_SIZES = ("selection", "pool")
MAX_INPUT_SIZE = 1024  # pixels per side of the images a model is trained or evaluated on

Fraction = Annotated[float, Field(ge=0, le=1)]
RECIPE = {"default_help": "the method's recipe"}

METHOD_TEXT = (
    "kd3 = KD3 with the recipe chosen on validation runs: dynamic selection and classifier "
    "sharing (feature alignment), deviating from the paper in: epochs as long as the pool "
    "(the selected images are cycled, so selection does not halve the optimizer steps); no "
    "MixDistribution / contrastive term (--mixing puts it back); pad-4 random crop + flip "
    "instead of RandomResizedCrop(0.08-1); a Hinton KD term (T=4, weight 1) on the shared "
    "head's logits; the robust selection rule (teacher share >= 0.5, class thresholds clamped "
    "to [0.5, 0.8], selection on clean views, at least 10% of the pool kept); "
    "kd3-paper = the paper's released recipe (all three components, RandomResizedCrop(0.08-1), "
    "feature alignment only, FlexMatch thresholds, teacher share ramping to 0 at E/2, one pass "
    "over the selection per epoch); kd = Hinton KD on the whole pool; dfnd = KD + noise "
    "adaptation on the teacher's most confident half; random = KD on a random half"
)


# The fields whose defaults differ between commands (TeacherOptions, EvaluateOptions): their
# bounds and help here, the default where a model uses them.
Epochs = Annotated[int, Field(ge=1, le=10_000, description="training epochs")]
BatchSize = Annotated[int, Field(ge=2, le=65_536, description="images per optimizer step")]
LearningRate = Annotated[float, Field(gt=0, le=10, description="peak learning rate (SGD)")]
Schedule = Annotated[
    Literal[SCHEDULES],
    Field(
        description="lr schedule: cosine (per step); step (x0.1 at 150/180/210 of 240 epochs, "
        "scaled); onecycle (linear warm-up from lr/25 over the first 30% of steps, then cosine "
        "to ~0)"
    ),
]
Nesterov = Annotated[bool, Field(description="SGD with Nesterov momentum")]
Augment = Annotated[
    Literal[AUGMENTS] | None,
    Field(
        description="padcrop: pad-4 random crop + flip; rrc: RandomResizedCrop(--crop-scale) + flip"
    ),
]
CropScale = Annotated[
    tuple[Fraction, Fraction] | None,
    Field(description="rrc's range of crop areas, as shares of the image"),
]
Device = Annotated[
    str | None,
    Field(
        pattern=r"^(cpu|mps|cuda(:[0-9]{1,2})?)$",
        description="cpu, mps, cuda or cuda:N",
        json_schema_extra={"default_help": "cuda when available, else cpu"},
    ),
]


class TrainOptions(BaseModel, extra="forbid"):
    """What every training command sets: the optimizer, schedule, augmentation and device."""

    epochs: Epochs = 20
    batch_size: BatchSize = 256
    lr: LearningRate = 0.05
    momentum: Fraction = Field(0.9, description="SGD momentum")
    weight_decay: float = Field(5e-4, ge=0, le=0.1, description="SGD weight decay")
    schedule: Schedule = "cosine"
    nesterov: Nesterov = False
    augment: Augment = Field(
        None,
        json_schema_extra={"default_help": "the method's: padcrop, rrc for kd3-paper"},
    )
    crop_scale: CropScale = Field(
        None,
        json_schema_extra={
            "metavar": "MIN,MAX",
            "default_help": "the method's: 0.08,1 for kd3-paper, else 0.35,1",
        },
    )
    bn_recalibration: int = Field(
        0,
        ge=0,
        le=1_000_000,
        description="re-estimate BatchNorm statistics on N training images before each "
        "evaluation and at the end; 0: off",
        json_schema_extra={"metavar": "N"},
    )
    seed: int = Field(0, ge=0, lt=2**31, description="seed of every random draw")
    device: Device = None
    memory_budget: ByteSize | None = Field(
        None,
        description="decoded images to hold in memory (on the training device), e.g. 8GiB; a "
        "larger pool is streamed from its image cache on disk",
        json_schema_extra={
            "metavar": "BYTES",
            "default_help": "a third of the GPU's memory, else a quarter of the host's RAM",
        },
    )

    @model_validator(mode="after")
    def _crop_scale_rises(self):
        if self.crop_scale is not None and not 0 < self.crop_scale[0] <= self.crop_scale[1]:
            raise ValueError(f"crop_scale {self.crop_scale}: need 0 < MIN <= MAX <= 1")
        return self


class DistillOptions(TrainOptions):
    """`kd3 distill`: the method, the student and the KD3 components and constants."""

    method: Literal[DISTILL_METHODS] = Field("kd3", description=METHOD_TEXT)
    student: str = Field(
        "resnet8",
        description="student architecture (kd3 models lists them)",
        json_schema_extra={"metavar": "ARCH"},
    )
    selection: bool = Field(
        True, description="KD3's dynamic instance selection (--no-selection: the whole pool)"
    )
    sharing: bool = Field(
        True,
        description="KD3's classifier sharing with feature alignment (--no-sharing: the "
        "student's own classifier + KD)",
    )
    mixing: bool | None = Field(
        None,
        description="KD3's MixDistribution + contrastive term",
        json_schema_extra={"default_help": "the method's: off for kd3, on for kd3-paper"},
    )
    selection_rule: Literal[SELECTION_RULES] | None = Field(
        None,
        description="paper: FlexMatch class thresholds; robust: thresholds clamped to "
        "[--tau-min, --tau-max], clean views, at least 10% of the pool",
        json_schema_extra={"default_help": "the method's: robust for kd3, else paper"},
    )
    epoch_size: Literal[EPOCH_SIZES] | None = Field(
        None,
        description="selection: an epoch is one pass over the selected images; pool: they are "
        "cycled until an epoch has as many as the pool",
        json_schema_extra={"default_help": "the method's: pool for kd3, else selection"},
    )
    tau: Fraction = Field(0.95, description="FlexMatch confidence threshold tau")
    tau_min: Fraction = Field(0.5, description="robust rule: the class thresholds' floor")
    tau_max: Fraction = Field(0.8, description="robust rule: the class thresholds' cap")
    share_floor: Fraction | None = Field(
        None,
        description="floor under the teacher's share of the selection vote",
        json_schema_extra={"metavar": "X", "default_help": "the method's: 0.5 for kd3, else 0"},
    )
    gamma: float = Field(0.001, ge=0, le=100, description="weight of the contrastive term")
    mix_alpha: float = Field(0.1, ge=0, le=10, description="MixDistribution's Beta(a, a)")
    nt_temperature: float = Field(
        0.3, gt=0, le=100, description="temperature of the contrastive (NT-Xent) term"
    )
    kd_weight: float | None = Field(
        None,
        ge=0,
        le=100,
        description="weight of a Hinton KD term on the shared head's logits",
        json_schema_extra={"default_help": "the method's: 1 for kd3, else 0"},
    )
    kd_temperature: float = Field(4.0, gt=0, le=100, description="temperature of every KD term")
    processes: int = Field(
        1,
        ge=1,
        le=64,
        description="training processes (DistributedDataParallel on this machine): one per "
        "GPU; on a host without GPUs, CPU processes talking gloo",
        json_schema_extra={"metavar": "N"},
    )
    subset_fraction: float = Field(
        0.5, gt=0, le=1, description="dfnd's and random's subset, as a share of the pool"
    )
    dfnd_teacher_accuracy: float | None = Field(
        None,
        gt=0,
        le=1,
        description="dfnd: the teacher accuracy its noise adaptation assumes",
        json_schema_extra={"default_help": "the teacher's mean confidence on its subset"},
    )
    infer_batch_size: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="batch of the teacher's passes over the pool (selection, ranking)",
        json_schema_extra={"default_help": "by device"},
    )
    class_map: dict[str, str] = Field(
        {},
        description="rename a class of the pool or evaluation set to the teacher's class "
        "(repeat the flag for more); without it, their classes must be among the teacher's "
        "by name",
        json_schema_extra={"metavar": "NAME=TEACHER_NAME"},
    )

    @model_validator(mode="after")
    def _thresholds_in_order(self):
        if self.tau_min > self.tau_max:
            raise ValueError(f"tau_min {self.tau_min} is above tau_max {self.tau_max}")
        return self


class TeacherOptions(TrainOptions):
    """`kd3 train-teacher`: the architecture and image size, with the teacher recipe's
    defaults (one-cycle schedule, Nesterov momentum, a higher peak lr)."""

    arch: str = Field(
        "resnet20",
        description="architecture (kd3 models lists them)",
        json_schema_extra={"metavar": "ARCH"},
    )
    input_size: int | None = Field(
        None,
        ge=1,
        le=MAX_INPUT_SIZE,
        description="image size the model is trained on, in pixels",
        json_schema_extra={"metavar": "PX", "default_help": "an npz's own, else the arch's"},
    )
    epochs: Epochs = 30
    batch_size: BatchSize = 128
    lr: LearningRate = 0.2
    schedule: Schedule = "onecycle"
    nesterov: Nesterov = True
    augment: Augment = Field(None, json_schema_extra={"default_help": "padcrop"})
    crop_scale: CropScale = Field(
        None, json_schema_extra={"metavar": "MIN,MAX", "default_help": "0.35,1"}
    )


class EvaluateOptions(BaseModel, extra="forbid"):
    """`kd3 evaluate`: where to run, and how the evaluation set's classes meet the model's."""

    device: Device = None
    class_map: dict[str, str] = Field(
        {},
        description="rename a class of the evaluation set to the model's class (repeat the "
        "flag for more); without it, its classes must be among the model's by name",
        json_schema_extra={"metavar": "NAME=MODEL_NAME"},
    )
