"""Pipeline configs (YAML): validated with pydantic, errors reported one per line with the field.

    name: pets                     # the pool is published as pools/<name> in the artifact store
    classes: [cat, {name: dog, keywords: [puppy]}]   # in the teacher's output order
    crawl: {sources: [wikimedia, openverse], per_class: 200}
    dedup: {eval: data/test.npz}
    loop: {rounds: 3}              # crawl again for classes with few useful images (teacher's)
    score: {}                      # the teacher's per-class yield (kd3 pool score), before distill
    distill: {teacher: teacher.pt, student: resnet8, method: kd3, epochs: 30, eval: data/test.npz}

Relative paths are relative to the config file. Leave out `crawl` and give `pool:` to start
from an existing pool; leave out `dedup`, `score` or `distill` to skip or stop earlier.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from common.errors import UserError
from common.options import describe
from crawler.options import ClassSpec, CrawlOptions
from dedup.options import DedupOptions
from distill.options import DistillOptions
from steer.options import LoopOptions, ScoreOptions
from workers.references import check_name


class ConfigError(UserError):
    """A config file that cannot be used; the message names the file and every bad field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


CrawlSpec = CrawlOptions  # the config's `crawl:` section is exactly the crawl's options


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


class ScoreSpec(ScoreOptions):
    """The config's `score:` section: the teacher scores the pool after dedup (kd3 pool score):
    manifest columns, the per-class yield in the job's metrics, POOL/score/report.html."""

    teacher: str | None = Field(
        None,
        description="the teacher checkpoint (local path, uploaded to the store, or artifact:KEY)",
        json_schema_extra={"metavar": "CKPT", "default_help": "the distill stage's teacher"},
    )
    teacher_arch: str | None = Field(
        None,
        description="its architecture, for a bare state_dict (kd3 models lists them)",
        json_schema_extra={"metavar": "ARCH", "default_help": "the checkpoint's own"},
    )


class DistillSpec(DistillOptions):
    """The config's `distill:` section and `kd3 submit distill`: every distill option (the same
    keys as kd3 distill's flags), plus the teacher and evaluation inputs."""

    teacher: str = Field(
        description="teacher checkpoint: a kd3 checkpoint or a bare state_dict (local path, "
        "uploaded to the store, or artifact:KEY)",
        json_schema_extra={"metavar": "CKPT"},
    )
    teacher_arch: str | None = Field(
        None,
        description="the teacher's architecture, for a bare state_dict (kd3 models lists them)",
        json_schema_extra={"metavar": "ARCH"},
    )
    eval: str | None = Field(
        None,
        description="labelled evaluation pool or .npz (local path or artifact:KEY)",
        json_schema_extra={"metavar": "SET"},
    )

    @model_validator(mode="before")
    @classmethod
    def _flatten_options(cls, value):
        """Configs written before the section was flat kept training settings under
        `options:`; they are the same keys, so they are merged in."""
        if isinstance(value, dict) and isinstance(value.get("options"), dict):
            value = {**{k: v for k, v in value.items() if k != "options"}, **value["options"]}
        return value

    def train_options(self) -> dict:
        """The DistillOptions part, as the job spec carries it."""
        return self.model_dump(mode="json", include=set(DistillOptions.model_fields))


class PipelineConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9._-]+$")
    classes: list[ClassSpec] = []  # needed to crawl; a pool or teacher knows its own
    pool: str | None = None  # an existing pool instead of a crawl
    crawl: CrawlSpec | None = None
    dedup: DedupSpec | None = None
    loop: LoopOptions | None = None  # crawl again for thin classes (steer.loop), with a teacher
    score: ScoreSpec | None = None
    distill: DistillSpec | None = None

    @field_validator("name")
    @classmethod
    def _name_is_one_segment(cls, value: str) -> str:
        return check_name(value, "name")  # it names folders and keys: no '.', '..', bounded

    @model_validator(mode="after")
    def _one_source(self):
        if (self.crawl is None) == (self.pool is None):
            raise ValueError(
                "give either 'crawl' (collect a new pool) or 'pool' (use one), not both"
            )
        if self.crawl is not None and not self.classes:
            raise ValueError("a crawl needs 'classes'")
        if not (self.crawl or self.dedup or self.score or self.distill):
            raise ValueError(
                "nothing to do: give at least one of 'crawl', 'dedup', 'score', 'distill'"
            )
        if self.score is not None and self.score.teacher is None and self.distill is None:
            raise ValueError("score needs a teacher: give score.teacher, or a distill section")
        if self.loop is not None:
            if self.crawl is None:
                raise ValueError("loop crawls again: it needs a 'crawl' section")
            if (self.score is None or self.score.teacher is None) and self.distill is None:
                raise ValueError("loop needs a teacher: give score.teacher, or a distill section")
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
        if self.score:
            update["score"] = self.score.model_copy(update={"teacher": fix(self.score.teacher)})
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
        raise ConfigError(f"{where}: {describe(exc)}") from None


def check_stages(config: PipelineConfig, where: str) -> PipelineConfig:
    """Check what only the stages know (the model zoo, the methods' recipes) before anything
    is queued, so a typo fails now rather than hours later on a worker."""
    from distill.models import check_arch
    from distill.trainer import TrainConfig

    if config.distill is not None:
        try:
            check_arch(config.distill.student)
        except UserError as exc:
            raise ConfigError(f"{where}: distill.student: {exc}") from None
        try:
            TrainConfig.from_options(DistillOptions(**config.distill.train_options()))
        except UserError as exc:
            raise ConfigError(f"{where}: distill: {exc}") from None
    return config
