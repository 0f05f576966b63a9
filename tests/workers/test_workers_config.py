"""Pipeline configs: clear one-line errors for bad files, relative paths resolved."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from workers.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(text)
    return path


def _refusal(tmp_path: Path, text: str) -> str:
    """The error of loading config `text`: one line that starts with the file's path."""
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    return message


def test_example_configs_are_valid():
    config = load_config(ROOT / "configs" / "pipeline.yaml")
    assert config.classes[0].name == "airplane" and config.classes[0].keywords == [
        "airliner",
        "jet aircraft",
    ]
    assert config.distill.teacher == str((ROOT / "teachers" / "teacher.pt").resolve())


def test_names_become_classes_and_paths_resolve_against_the_file(tmp_path):
    config = load_config(_write(tmp_path, "name: x\nclasses: [cat, dog]\npool: pools/p\n"
                                          "distill: {teacher: t.pt, eval: artifact:inputs/e.npz}\n"))  # fmt: skip
    assert [c.name for c in config.classes] == ["cat", "dog"]
    assert config.pool == str(tmp_path / "pools" / "p")
    assert config.distill.teacher == str(tmp_path / "t.pt")
    assert config.distill.eval == "artifact:inputs/e.npz"
    scored = load_config(_write(tmp_path, "name: x\npool: p\nscore: {teacher: s.pt}\n"))
    assert scored.score.teacher == str(tmp_path / "s.pt")


@pytest.mark.parametrize(
    "text, message",
    [
        ("name: x\nclasses: [cat]\n", "give either 'crawl' (collect a new pool) or 'pool'"),
        ("name: x\npool: p\nscore: {}\n", "score needs a teacher: give score.teacher"),
        ("name: x\npool: p\nscore: {teacher: t.pt, min_confidence: 2}\n", "score.min_confidence"),
        (
            "name: x\nclasses: [cat]\npool: p\ncrawl: {per_class: -1}\n",
            "crawl.per_class: Input should be greater than or equal to 0",
        ),
        (
            "name: x\nclasses: [cat]\npool: p\ndistill: {teacher: t.pt, epoch: 3}\n",
            "distill.epoch: Extra inputs are not permitted",
        ),
        ("name: x\nclasses: [cat, cat]\npool: p\ndedup: {}\n", "duplicate class names"),
        ("name: 'a b'\nclasses: [cat]\npool: p\ndedup: {}\n", "name: String should match pattern"),
        ("name: x\npool: p\n", "nothing to do"),
        ("name: x\ncrawl: {}\n", "a crawl needs 'classes'"),
        ("name: x\nclasses: [cat\n", "not valid YAML"),
        ("- just\n- a list\n", "expected a mapping"),
    ],
)
def test_bad_configs_name_the_file_and_the_field(tmp_path, text, message):
    assert message in _refusal(tmp_path, text)


def test_kd3_run_refuses_a_bad_config_in_one_line(tmp_path):
    path = _write(
        tmp_path,
        "name: x\nclasses: [cat]\npool: p\ndistill: {teacher: t.pt, student: resnet9000}\n",
    )
    run = subprocess.run([sys.executable, "-m", "workers.cli", "run", str(path)], capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert run.returncode == 2
    assert run.stderr.strip().startswith(
        f"kd3 run: error: {path}: distill.student: unknown architecture 'resnet9000'; known: "
    )


@pytest.mark.parametrize(
    "settings, message",
    [
        ("{TELNETCONSOLE_ENABLED: true, TELNETCONSOLE_PORT: [6023, 6023]}",
         "crawl.settings: TELNETCONSOLE_ENABLED: not an allowed crawl setting; "
         "TELNETCONSOLE_PORT: not an allowed crawl setting; allowed: CONCURRENT_REQUESTS"),
        ("{KD3_POOL: /elsewhere/pool}", "KD3_POOL: set it with --out, not as a crawl setting"),
        ("{DOWNLOADER_MIDDLEWARES: {crawler.middlewares.AddressPolicyMiddleware: null}}",
         "DOWNLOADER_MIDDLEWARES: not an allowed crawl setting"),
        ("{EXTENSIONS: {}}", "EXTENSIONS: not an allowed crawl setting"),
        ("{DOWNLOAD_DELAY: soon}", "DOWNLOAD_DELAY: Input should be a valid number"),
        ("{RETRY_TIMES: 1000}", "RETRY_TIMES: Input should be less than or equal to 10"),
        ("{USER_AGENT: \"a\\r\\nX-Evil: 1\"}", "USER_AGENT: String should match pattern"),
    ],
)  # fmt: skip
def test_a_spec_with_a_refused_crawl_setting_is_refused_in_one_line(tmp_path, settings, message):
    text = f"name: x\nclasses: [cat]\ncrawl: {{settings: {settings}}}\n"
    assert message in _refusal(tmp_path, text)


def test_a_spec_keeps_allowed_crawl_settings_typed_and_checks_networks(tmp_path):
    spec = "crawl: {allow_networks: [127.0.0.1/32], settings: {DOWNLOAD_DELAY: '0.5'}}"
    config = load_config(_write(tmp_path, f"name: x\nclasses: [cat]\n{spec}\n"))
    assert config.crawl.settings == {"DOWNLOAD_DELAY": 0.5}
    path = _write(tmp_path, "name: x\nclasses: [cat]\ncrawl: {allow_networks: [localhost]}\n")
    with pytest.raises(ConfigError, match="crawl.allow_networks: .*'localhost'"):
        load_config(path)


@pytest.mark.parametrize(
    "distill, message",
    [
        ("{state_path: /etc}", "distill.state_path: Extra inputs are not permitted"),
        ("{options: {state_path: /etc}}", "distill.state_path: Extra inputs are not permitted"),
        ("{infer_batch_size: 1000000000}", "distill.infer_batch_size: Input should be less"),
        ("{tau_max: 7}", "distill.tau_max: Input should be less than or equal to 1"),
        ("{augment: cutmix}", "distill.augment: Input should be 'rrc' or 'padcrop'"),
        ("{method: evil}", "distill.method: Input should be 'kd3', 'kd3-paper'"),
        ("{epochs: 1000000000}", "distill.epochs: Input should be less than or equal to 10000"),
        ("{device: 'cuda; rm -rf /'}", "distill.device: String should match pattern"),
    ],
)  # fmt: skip
def test_a_spec_with_a_refused_distill_option_is_refused_in_one_line(tmp_path, distill, message):
    spec = distill[:-1] + ", teacher: t.pt}"
    assert message in _refusal(tmp_path, f"name: x\nclasses: [cat]\npool: p\ndistill: {spec}\n")


@pytest.mark.parametrize(
    "section",
    ["{teacher: t.pt, epoch_size: pool, crop_scale: [0.08, 1]}",
     # written before the section was flat: the same keys under options:
     "{teacher: t.pt, options: {epoch_size: pool, crop_scale: [0.08, 1]}}"],
)  # fmt: skip
def test_the_distill_section_is_the_distill_options(tmp_path, section):
    from distill.options import DistillOptions
    from distill.trainer import TrainConfig

    config = load_config(
        _write(tmp_path, f"name: x\nclasses: [cat]\npool: p\ndistill: {section}\n")
    )
    assert set(DistillOptions.model_fields) <= set(type(config.distill).model_fields)
    train = TrainConfig.from_options(DistillOptions(**config.distill.train_options()))
    assert train.epoch_size == "pool" and train.crop_scale == (0.08, 1.0)
