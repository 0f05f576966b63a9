"""Pipeline configs (YAML): validated with pydantic, errors reported one per line with the field.

    name: pets                     # the pool is published as pools/<name> in the artifact store
    classes: [cat, {name: dog, keywords: [puppy]}]   # in the teacher's output order
    crawl: {sources: [wikimedia, openverse], per_class: 200}
    dedup: {eval: data/test.npz}
    distill: {teacher: teacher.pt, student: resnet8, method: kd3, epochs: 30, eval: data/test.npz}

Relative paths are relative to the config file. Leave out `crawl` and give `pool:` to start
from an existing pool; leave out `dedup` or `distill` to stop earlier.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from common.errors import UserError
from crawler.addresses import parse_networks
from crawler.allowed_settings import check_settings
from dedup.options import DedupOptions
from distill.cli import DISTILL_METHODS, EPOCH_SIZES
from workers.references import check_name


class ConfigError(UserError):
    """A config file that cannot be used; the message names the file and every bad field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClassSpec(_Strict):
    name: str = Field(min_length=1)
    keywords: list[str] = []


class CrawlSpec(_Strict):
    sources: list[str] = ["wikimedia", "openverse"]
    per_class: int = Field(100, ge=0)
    seeds: list[str] = []
    source_urls: dict[str, str] = {}
    allow_networks: list[str] = []  # as narrow as possible, e.g. 127.0.0.1/32 for a local demo
    hosts: dict[str, str] = {}
    settings: dict[str, Any] = {}  # only crawl settings that crawler/allowed_settings.py allows

    @field_validator("allow_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        parse_networks(value)  # a ValueError names the bad network
        return value

    @field_validator("settings")
    @classmethod
    def _allowed_settings(cls, value: dict[str, Any]) -> dict[str, Any]:
        return check_settings(value)  # SettingError (a ValueError): one line per setting


class DedupSpec(DedupOptions):
    """The config's `dedup:` section and `kd3 submit dedup`: every dedup option, plus inputs."""

    eval: str | None = Field(
        None,
        description="evaluation set to decontaminate against: a pool, image folder or .npz "
        "(local path or artifact:KEY)",
        json_schema_extra={"metavar": "SET"},
    )
    teacher: str | None = Field(
        None,
        description="embed with this checkpoint's features instead of the feature network",
        json_schema_extra={"metavar": "CKPT"},
    )
    use_teacher: bool = Field(
        True,
        description="in a pipeline without --teacher, embed with the distill stage's teacher",
    )


Fraction = Annotated[float, Field(ge=0, le=1)]


class DistillOptions(_Strict):
    """The TrainConfig fields a job may set beyond DistillSpec's own, typed and bounded (None:
    the method's recipe decides); anything else is refused."""

    schedule: Literal["cosine", "step", "onecycle"] | None = None
    nesterov: bool | None = None
    momentum: Fraction | None = None
    weight_decay: float | None = Field(None, ge=0, le=0.1)
    augment: Literal["rrc", "padcrop"] | None = None
    crop_scale: tuple[Fraction, Fraction] | None = None
    selection: bool | None = None
    sharing: bool | None = None
    mixing: bool | None = None
    selection_rule: Literal["paper", "robust"] | None = None
    epoch_size: Literal[EPOCH_SIZES] | None = None
    tau: Fraction | None = None
    tau_min: Fraction | None = None
    tau_max: Fraction | None = None
    share_floor: Fraction | None = None
    gamma: float | None = Field(None, ge=0, le=100)
    mix_alpha: float | None = Field(None, ge=0, le=10)
    nt_temperature: float | None = Field(None, gt=0, le=100)
    kd_weight: float | None = Field(None, ge=0, le=100)
    kd_temperature: float | None = Field(None, gt=0, le=100)
    subset_fraction: float | None = Field(None, gt=0, le=1)
    dfnd_teacher_accuracy: float | None = Field(None, gt=0, le=1)
    infer_batch_size: int | None = Field(None, ge=1, le=4096)
    bn_recalibration: int | None = Field(None, ge=0, le=1_000_000)


class DistillSpec(_Strict):
    teacher: str
    teacher_arch: str | None = None
    student: str = "resnet8"
    method: Literal[DISTILL_METHODS] = "kd3"
    epochs: int = Field(20, ge=1, le=10_000)
    batch_size: int = Field(256, ge=2, le=65_536)
    lr: float = Field(0.05, gt=0, le=10)
    seed: int = Field(0, ge=0, lt=2**31)
    eval: str | None = None
    options: DistillOptions = DistillOptions()
    device: str | None = Field(None, pattern=r"^(cpu|mps|cuda(:[0-9]{1,2})?)$")

    def train(self) -> dict:
        return {"method": self.method, "student": self.student, "epochs": self.epochs,
                "batch_size": self.batch_size, "lr": self.lr, "seed": self.seed,
                **self.options.model_dump(exclude_none=True)}  # fmt: skip


class PipelineConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9._-]+$")
    classes: list[ClassSpec] = []  # needed to crawl; a pool or teacher knows its own
    pool: str | None = None  # an existing pool instead of a crawl
    crawl: CrawlSpec | None = None
    dedup: DedupSpec | None = None
    distill: DistillSpec | None = None

    @field_validator("name")
    @classmethod
    def _name_is_one_segment(cls, value: str) -> str:
        return check_name(value, "name")  # it names folders and keys: no '.', '..', bounded

    @field_validator("classes", mode="before")
    @classmethod
    def _names_as_classes(cls, value):
        if isinstance(value, list):
            return [{"name": v} if isinstance(v, str) else v for v in value]
        return value

    @model_validator(mode="after")
    def _one_source(self):
        if (self.crawl is None) == (self.pool is None):
            raise ValueError(
                "give either 'crawl' (collect a new pool) or 'pool' (use one), not both"
            )
        if self.crawl is not None and not self.classes:
            raise ValueError("a crawl needs 'classes'")
        if not (self.crawl or self.dedup or self.distill):
            raise ValueError("nothing to do: give at least one of 'crawl', 'dedup', 'distill'")
        names = [c.name for c in self.classes]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate class names in {names}")
        return self

    def resolve_paths(self, base: Path) -> PipelineConfig:
        """Make relative file paths absolute against `base` (the config's folder)."""

        def fix(p: str | None) -> str | None:
            if p is None or p.startswith("artifact:") or "://" in p:
                return p
            return str((base / p).resolve())

        update = {"pool": fix(self.pool)}
        if self.dedup:
            update["dedup"] = self.dedup.model_copy(
                update={"eval": fix(self.dedup.eval), "teacher": fix(self.dedup.teacher)}
            )
        if self.distill:
            update["distill"] = self.distill.model_copy(
                update={"teacher": fix(self.distill.teacher), "eval": fix(self.distill.eval)}
            )
        return self.model_copy(update=update)


def load_config(path: str | Path) -> PipelineConfig:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(
            f"{path}:{where} not valid YAML ({getattr(exc, 'problem', exc)})"
        ) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    return validate_config(raw, str(path)).resolve_paths(path.parent)


def validate_config(raw: dict, where: str) -> PipelineConfig:
    """A PipelineConfig from plain data; every problem on one line, prefixed by `where`."""
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"{where}: {problems}") from None


def check_stages(config: PipelineConfig, where: str) -> PipelineConfig:
    """Check settings only the stages know (architectures, sources, training options) before
    anything is queued, so a typo fails now rather than hours later on a worker."""
    from crawler.run import SOURCES
    from distill.errors import DistillError
    from distill.models import model_names
    from distill.trainer import TrainConfig

    if config.crawl is not None:
        unknown = sorted(set(config.crawl.sources) - set(SOURCES))
        if unknown or not config.crawl.sources:
            raise ConfigError(
                f"{where}: crawl.sources: unknown {unknown}; choose from {', '.join(SOURCES)}"
            )
    if config.distill is not None:
        if config.distill.student not in model_names():
            raise ConfigError(f"{where}: distill.student: unknown architecture "
                              f"'{config.distill.student}' (kd3 models lists them)")  # fmt: skip
        try:
            TrainConfig(**config.distill.train())
        except TypeError as exc:
            raise ConfigError(f"{where}: distill.options: {exc}") from None
        except DistillError as exc:
            raise ConfigError(f"{where}: distill: {exc}") from None
    return config
