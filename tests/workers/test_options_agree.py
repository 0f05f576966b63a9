"""One options model per stage: the stage's own command, `kd3 submit`, the YAML config and the
options the worker's stage function receives agree, on defaults and on a value that was set."""

from __future__ import annotations

import pytest
import yaml

from common.options import from_args
from crawler.options import CrawlOptions
from dedup.options import DedupOptions
from distill.options import DistillOptions
from workers.artifacts import ArtifactStore
from workers.cli import build_parser
from workers.config import validate_config
from workers.pipeline import plan

# stage: (options model, a field and a value that is not its default, the flag that sets it)
CHANGED = {
    "crawl": (CrawlOptions, "per_class", 7, ["--per-class", "7"]),
    "dedup": (DedupOptions, "radius", 6, ["--radius", "6"]),
    "distill": (DistillOptions, "tau", 0.9, ["--tau", "0.9"]),
}


@pytest.fixture
def inputs(tmp_path):
    from pool.store import Pool

    teacher = tmp_path / "teacher.pt"
    teacher.write_bytes(b"not loaded before a worker runs it")
    pool = Pool.create(tmp_path / "pool").root
    return {"teacher": str(teacher), "pool": str(pool), "store": str(tmp_path / "store")}


def _parse(argv: list[str]):
    return build_parser(argv[0]).parse_args(argv)


def _cli_options(stage: str, extra: list[str], inputs: dict):
    """What the stage's own command (kd3 crawl|dedup|distill) would run with."""
    if stage == "crawl":
        from crawler.cli import job_from_args

        args = _parse(["crawl", "--classes", "cat", "--out", inputs["pool"], *extra])
        return job_from_args(args).options
    if stage == "dedup":  # as dedup.cli.cmd_dedup builds them
        return from_args(DedupOptions, _parse(["dedup", inputs["pool"], *extra]), "kd3 dedup")
    args = _parse(["distill", "--teacher", inputs["teacher"], "--pool", inputs["pool"],
                   "--out", "o", *extra])  # fmt: skip
    return from_args(DistillOptions, args, "kd3 distill")  # as distill.cli.cmd_distill


def _queued_spec(argv: list[str], inputs: dict, server) -> dict:
    """Run `kd3 submit ...` against a real Redis and read back the spec of the job it queued:
    exactly what a worker will run."""
    from workers.cli import main
    from workers.jobs import JobStore

    argv = [*argv, "--redis", server.url, "--artifacts", inputs["store"]]
    assert main(argv) == 0
    return JobStore(server.client()).list(1)[0].spec


def _submitted(stage: str, extra: list[str], inputs: dict, server) -> dict:
    head = {
        "crawl": ["--name", "p", "--classes", "cat"],
        "dedup": ["--pool", inputs["pool"]],
        "distill": ["--teacher", inputs["teacher"], "--pool", inputs["pool"]],
    }[stage]
    return _queued_spec(["submit", stage, *head, *extra], inputs, server)


def _from_yaml(stage: str, field: str | None, value, inputs: dict, tmp_path, server) -> dict:
    section = {"crawl": {}, "dedup": {}, "distill": {"teacher": inputs["teacher"]}}[stage]
    if field is not None:
        section[field] = value
    raw = {"name": "p", stage: section}
    raw.update({"classes": ["cat"]} if stage == "crawl" else {"pool": inputs["pool"]})
    path = tmp_path / f"{stage}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return _queued_spec(["submit", "pipeline", str(path)], inputs, server)


@pytest.mark.parametrize("stage", list(CHANGED))
@pytest.mark.parametrize("changed", [False, True], ids=["defaults", "one-set"])
def test_cli_submit_yaml_and_worker_agree(stage, changed, inputs, tmp_path, redis_server):
    from workers.stages import spec_options

    model, field, value, flags = CHANGED[stage]
    extra = flags if changed else []
    expected = model(**({field: value} if changed else {})).model_dump()

    assert _cli_options(stage, extra, inputs).model_dump() == expected
    submitted = _submitted(stage, extra, inputs, redis_server)
    assert spec_options(stage, submitted).model_dump() == expected
    from_yaml = _from_yaml(stage, field if changed else None, value, inputs, tmp_path, redis_server)
    assert spec_options(stage, from_yaml).model_dump() == expected


def test_a_pipeline_reaches_every_worker_stage_with_its_options(inputs):
    from workers.stages import spec_options

    config = validate_config(
        {"name": "p", "classes": ["cat"], "crawl": {"per_class": 3},
         "dedup": {"hash": "dhash", "eval_crops": False},
         "distill": {"teacher": inputs["teacher"], "epoch_size": "selection", "tau": 0.8}},
        "test",
    )  # fmt: skip
    specs = dict(plan(config, ArtifactStore(inputs["store"])))
    assert spec_options("crawl", specs["crawl"]).per_class == 3
    dedup = spec_options("dedup", specs["dedup"])
    assert (dedup.hash, dedup.eval_crops) == ("dhash", False)
    distill = spec_options("distill", specs["distill"])
    assert (distill.epoch_size, distill.tau) == ("selection", 0.8)


def test_a_spec_without_options_is_refused_not_run_on_defaults():
    from common.options import OptionsError
    from workers.stages import spec_options

    old_format = {"teacher": "artifact:teachers/t.pt", "train": {"epochs": 60, "tau": 0.8}}
    with pytest.raises(OptionsError, match="no 'options'"):
        spec_options("distill", old_format)
