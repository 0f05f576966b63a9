"""The class contract (teacher vs pool vs evaluation set), the options models and the flags
generated from them, and the npz reader's image handling as distill sees it."""

import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common.options import from_args
from distill.checkpoints import ModelMeta, save_model
from distill.contract import ClassInfo, match_classes
from distill.data import load_images
from distill.errors import DistillError
from distill.models import create_model
from distill.options import DistillOptions, EvaluateOptions, TeacherOptions
from distill.trainer import TrainConfig
from pool.importer import import_into_pool
from workers.cli import build_parser, main

sys.path.insert(0, str(Path(__file__).parent))
from synthetic import NAMES, make_images  # noqa: E402

torch.set_num_threads(1)
TRAIN = ["--epochs", "1", "--batch-size", "8", "--device", "cpu"]
TEACHER = ClassInfo("teacher", NAMES, 4)  # red, green, blue, yellow


def refused(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"kd3 {argv[0]}: error: ") and len(err.splitlines()) == 1, err
    return err


def save_teacher(path: Path, class_names=NAMES) -> Path:
    meta = ModelMeta("resnet8", 4, class_names=class_names, input_size=16)
    save_model(path, create_model("resnet8", 4), meta)
    return path


def named_npz(path: Path, names: list[str], n: int = 16) -> Path:
    x, y = make_images(n, 16)
    np.savez(path, x=x, y=y % len(names), class_names=np.array(names))
    return path


# -- the contract, end to end ---------------------------------------------------------------------
def test_a_4_class_teacher_on_a_10_class_pool_is_refused_before_any_work(tmp_path, capsys):
    teacher = save_teacher(tmp_path / "t.pt")
    import_into_pool(named_npz(tmp_path / "ten.npz", [f"c{i}" for i in range(10)]), tmp_path / "p")
    argv = ["distill", "--teacher", str(teacher), "--pool", str(tmp_path / "p"), *TRAIN]
    err = refused([*argv, "--out", str(tmp_path / "out")], capsys)
    assert "pool " in err and "classes [c0, c1, c2, c3, c4, c5, c6, c7, ... 10 in all]" in err
    assert "are not the teacher's [red, green, blue, yellow]" in err and "--class-map" in err
    assert not (tmp_path / "out").exists()
    assert not list((tmp_path / "p").glob("cache/images-*"))  # the pool was never materialised


def test_an_evaluation_set_of_other_classes_is_refused(tmp_path, capsys):
    teacher = save_teacher(tmp_path / "t.pt")
    pool = named_npz(tmp_path / "pool.npz", ["blue", "red"])  # a subset: fine
    other = named_npz(tmp_path / "eval.npz", ["cat", "red"])
    argv = ["distill", "--teacher", str(teacher), "--pool", str(pool), "--eval", str(other)]
    err = refused([*argv, *TRAIN, "--out", str(tmp_path / "out")], capsys)
    assert f"evaluation set {other} classes [cat, red] are not the teacher's" in err
    assert "([cat] not among them)" in err and not (tmp_path / "out").exists()
    err = refused(["evaluate", str(teacher), "--eval", str(other)], capsys)
    assert "are not the model's [red, green, blue, yellow]" in err and "NAME=MODEL_NAME" in err


def test_train_teacher_refuses_an_evaluation_set_of_other_classes(tmp_path, capsys):
    data = named_npz(tmp_path / "train.npz", NAMES)
    other = named_npz(tmp_path / "eval.npz", ["cat", "dog"])
    argv = ["train-teacher", "--data", str(data), "--eval", str(other), "--arch", "resnet8"]
    err = refused([*argv, *TRAIN, "--out", str(tmp_path / "out")], capsys)
    assert f"evaluation set {other} classes [cat, dog] are not the training data's [red," in err
    assert not (tmp_path / "out").exists()


def test_a_teacher_without_class_names_is_matched_by_count(tmp_path, capsys):
    torch.save(create_model("resnet8", 4).state_dict(), tmp_path / "bare.pt")
    three = named_npz(tmp_path / "three.npz", ["a", "b", "c"])
    argv = ["distill", "--teacher", str(tmp_path / "bare.pt"), "--arch", "resnet8"]
    argv += ["--input-size", "16", "--pool", str(three), *TRAIN, "--out", str(tmp_path / "o")]
    err = refused(argv, capsys)
    assert "has 3 classes [a, b, c], the teacher 4 (and no class names" in err
    err = refused([*argv, "--class-map", "a=red"], capsys)
    assert "--class-map needs class names for the teacher" in err
    # named on the command line, the bare teacher's classes match by name again
    named = [*argv, "--class-names", "c,b,a,d", "--class-map", "nothing=a"]
    assert "--class-map renames [nothing], which are no classes of pool" in refused(named, capsys)


@pytest.mark.parametrize(
    ("datasets", "class_map", "expected"),
    [
        ([ClassInfo("pool p", NAMES, 4)], {}, [None]),
        ([ClassInfo("pool p", ["blue", "red"], 2)], {}, [[2, 0]]),
        ([ClassInfo("pool p", ["azure", "red"], 2)], {"azure": "blue"}, [[2, 0]]),
        ([ClassInfo("pool p", None, 3)], {}, [None]),  # nameless labels index the teacher's
        ([ClassInfo("pool p", None, 0), ClassInfo("evaluation set e", ["green"], 1)], {}, [None, [1]]),
    ],
)  # fmt: skip
def test_matching_maps_names_onto_the_teachers_indices(datasets, class_map, expected):
    assert [m.index for m in match_classes(TEACHER, datasets, class_map)] == expected


@pytest.mark.parametrize(
    ("model", "datasets", "message"),
    [
        (TEACHER, [ClassInfo("pool p", None, 5)], "pool p labels run to 4, beyond the teacher's 4"),
        (TEACHER, [ClassInfo("pool p", ["red", "Red"], 2)], "([Red] not among them)"),
        (ClassInfo("teacher", None, 2), [ClassInfo("pool p", ["a", "b"], 2),
          ClassInfo("evaluation set e", ["b", "a"], 2)], "evaluation set e classes [b, a] are not "
          "pool p's [a, b]"),
    ],
)  # fmt: skip
def test_matching_refuses_in_one_line(model, datasets, message):
    with pytest.raises(DistillError) as err:
        match_classes(model, datasets)
    assert message in str(err.value) and "\n" not in str(err.value)


# -- options: one place for every default ---------------------------------------------------------
def _args(command: str, *argv: str):
    return build_parser(command).parse_args([command, *argv])


def test_flags_given_none_build_the_models_defaults():
    args = _args("distill", "--teacher", "t.pt", "--pool", "p", "--out", "o")
    options = from_args(DistillOptions, args, "bad option")
    assert options == DistillOptions()
    config = TrainConfig.from_options(options)
    assert config == TrainConfig() == TrainConfig(method="kd3")
    assert (config.epochs, config.lr, config.batch_size, config.schedule) == (
        20,
        0.05,
        256,
        "cosine",
    )
    teacher = from_args(TeacherOptions, _args("train-teacher", "--data", "d", "--out", "o"), "x")
    assert teacher == TeacherOptions()
    config = TrainConfig.from_options(teacher)
    assert (config.method, config.student, config.epochs, config.lr) == (
        "supervised",
        "resnet20",
        30,
        0.2,
    )
    assert (config.batch_size, config.schedule, config.nesterov) == (128, "onecycle", True)
    args = _args("evaluate", "m.pt", "--eval", "e.npz")
    assert from_args(EvaluateOptions, args, "bad option") == EvaluateOptions()
    # a flag given reaches the model, converted and checked there
    args = _args(
        "distill",
        "--teacher",
        "t",
        "--pool",
        "p",
        "--out",
        "o",
        "--crop-scale",
        "0.2,1",
        "--no-selection",
        "--class-map",
        "kitty=cat",
        "--class-map",
        "pup=dog",
    )
    options = from_args(DistillOptions, args, "bad option")
    assert options.crop_scale == (0.2, 1.0) and options.selection is False
    assert options.class_map == {"kitty": "cat", "pup": "dog"}
    assert TrainConfig.from_options(options).crop_scale == (0.2, 1.0)  # fmt: skip


def test_bad_flag_values_are_one_line_naming_the_flag(tmp_path, capsys):
    base = ["distill", "--teacher", "t.pt", "--pool", "p", "--out", str(tmp_path / "o")]
    err = refused([*base, "--tau-min", "0.9", "--tau-max", "0.5"], capsys)
    assert "tau_min 0.9 is above tau_max 0.5" in err
    err = refused([*base, "--tau", "2"], capsys)
    assert err == "kd3 distill: error: bad option: --tau: Input should be less than or equal to 1"
    assert "--device" in refused([*base, "--device", "gpu0"], capsys)
    assert "unknown architecture 'resnet9'" in refused([*base, "--student", "resnet9"], capsys)


@pytest.mark.parametrize("command", ["distill", "train-teacher", "evaluate", "export", "models"])
def test_every_flag_has_help_with_its_default_and_every_command_an_example(command):
    parser = build_parser(command)
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    assert "kd3 " + command in sub.epilog
    required = [a for g in sub._mutually_exclusive_groups if g.required for a in g._group_actions]
    for action in sub._actions:
        if action.dest == "help" or not action.option_strings or action.required:
            continue
        if action in required:
            continue
        assert action.help and "default" in action.help, action.option_strings


# -- images of an npz's encoded form ---------------------------------------------------------------
def _encoded_npz(path: Path, files: list[bytes]) -> Path:
    offsets = np.concatenate([[0], np.cumsum([len(f) for f in files])])
    np.savez(path, jpeg=np.frombuffer(b"".join(files), np.uint8), offsets=offsets)
    return path


def test_encoded_images_are_turned_by_exif_and_composited_on_white(tmp_path):
    picture = np.zeros((16, 16, 3), np.uint8)
    picture[:8] = (220, 30, 30)  # red top half, black bottom half
    exif = Image.Exif()
    exif[0x0112] = 3  # orientation: rotated 180 degrees
    plain, turned = io.BytesIO(), io.BytesIO()
    Image.fromarray(picture).save(plain, "JPEG", quality=95)
    Image.fromarray(picture).save(turned, "JPEG", quality=95, exif=exif)
    clear = io.BytesIO()
    Image.new("RGBA", (16, 16), (0, 0, 0, 0)).save(clear, "PNG")
    files = [plain.getvalue(), turned.getvalue(), clear.getvalue()]
    data = load_images(_encoded_npz(tmp_path / "j.npz", files), None)
    images = data.images.numpy().astype(int)
    assert images[0, :8].mean() > 80 and images[0, 8:].mean() < 10  # as stored
    assert images[1, 8:].mean() > 80 and images[1, :8].mean() < 10  # upside down, per EXIF
    assert (images[2] == 255).all()  # transparent: white
    assert (data.labels == -1).all()
