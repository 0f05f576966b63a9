"""End to end on generated data: teacher training, KD3 and baselines, resume, features, export."""

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from distill.checkpoints import load_model
from distill.data import load_images
from distill.errors import DistillError, TrainingCancelled
from distill.features import load_feature_extractor
from distill.trainer import TrainConfig, Trainer
from pool.importer import import_into_pool
from workers.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from synthetic import make_images, write_npz  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A trained resnet8 teacher (16x16 generated images, 4 classes), a pool, an eval set."""
    root = tmp_path_factory.mktemp("distill")
    write_npz(root / "train.npz", 384, seed=1)
    write_npz(root / "test.npz", 200, seed=2)
    # the pool: class images plus pure-noise distractors (y = -1), labels only for diagnostics
    write_npz(root / "pool.npz", 224, seed=3, distractors=64)
    args = ["train-teacher", "--data", str(root / "train.npz"), "--eval", str(root / "test.npz")]
    args += ["--arch", "resnet8", "--epochs", "2", "--batch-size", "64", "--lr", "0.05"]
    assert main([*args, "--out", str(root / "teacher"), "--device", "cpu"]) == 0
    return root


def test_teacher_training_writes_a_standalone_checkpoint(world):
    model, meta = load_model(world / "teacher" / "teacher.pt")
    assert meta.arch == "resnet8" and meta.class_names == ["red", "green", "blue", "yellow"]
    assert meta.input_size == 16 and meta.summary["eval_accuracy"] > 0.9
    lines = (world / "teacher" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[-1])["eval_accuracy"] > 0.9


@pytest.mark.parametrize("method", ["kd3", "kd3-paper"])
def test_kd3_distillation_from_a_pool_beats_chance(world, capsys, method):
    if not (world / "pool").exists():
        import_into_pool(world / "pool.npz", world / "pool")
    out = world / method
    args = ["distill", "--teacher", str(world / "teacher" / "teacher.pt"), "--pool"]
    args += [str(world / "pool"), "--eval", str(world / "test.npz"), "--student", "resnet8"]
    args += ["--method", method, "--epochs", "4", "--batch-size", "32", "--out", str(out)]
    assert main([*args, "--device", "cpu"]) == 0
    assert "final-epoch accuracy" in capsys.readouterr().out
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in history] == [1, 2, 3, 4]
    first = history[0]
    for key in ("teacher_share", "selected", "selected_per_class", "eval_per_class", "lr"):
        assert key in first
    assert 0 < first["selected"] <= 288 and sum(first["selected_per_class"]) == first["selected"]
    if method == "kd3-paper":  # the released recipe: alignment only, student alone from E/2
        assert set(first["losses"]) == {"wfa", "contrast", "loss"}
        assert history[0]["teacher_share"] > 0.5 and history[3]["teacher_share"] == 0.0
    else:  # the default: + KD term, no mixing; the teacher keeps half the vote; thresholds in
        # [0.5, 0.8]; every epoch as many steps as the whole pool (288 images, batch 32)
        assert set(first["losses"]) == {"wfa", "kd", "loss"}
        assert all(m["steps"] == 9 for m in history)
        assert all(m["teacher_share"] >= 0.5 for m in history)
        assert all(0.5 <= t <= 0.8 for m in history for t in m["thresholds"])
    assert history[-1]["eval_accuracy"] > 0.6  # chance is 0.25
    assert (out / "report.png").stat().st_size > 1000
    # the final student runs on its own: backbone + projector + the teacher's classifier
    student, meta = load_model(out / "student.pt")
    assert meta.kind == "kd3-student" and meta.teacher_arch == "resnet8"
    capsys.readouterr()
    assert main(["evaluate", str(out / "student.pt"), "--eval", str(world / "test.npz")]) == 0
    reported = float(capsys.readouterr().out.split()[1])
    assert reported == pytest.approx(history[-1]["eval_accuracy"], abs=1e-6)
    # a second run into the same folder without --resume is refused, nothing is overwritten
    before = (out / "state.pt").read_bytes()
    assert main([*args, "--device", "cpu"]) == 2
    assert "--resume" in capsys.readouterr().err and (out / "state.pt").read_bytes() == before


def _two_class_npz(path, names, n=64, seed=7):
    """`n` blue and red images (the teacher's classes 2 and 0), labelled 0 and 1 as `names`."""
    x, y = make_images(3 * n, 16, seed)
    keep = np.flatnonzero(np.isin(y, [2, 0]))[:n]
    np.savez(path, x=x[keep], y=np.where(y[keep] == 2, 0, 1), class_names=np.array(names))
    return path


@pytest.mark.parametrize(
    ("names", "flags", "note"),
    [
        (["blue", "red"], [], "are mapped by name onto the teacher's"),
        (["azure", "crimson"], ["--class-map", "azure=blue", "--class-map", "crimson=red"],
         "are mapped as [blue, red] onto the teacher's"),
    ],
    ids=["subset-by-name", "class-map"],
)  # fmt: skip
def test_a_pool_of_some_of_the_teachers_classes_is_mapped_onto_them(
    world, tmp_path, capsys, names, flags, note
):
    pool = _two_class_npz(tmp_path / "pool.npz", names)
    test = _two_class_npz(tmp_path / "test.npz", names, n=32, seed=8)
    args = ["distill", "--teacher", str(world / "teacher" / "teacher.pt"), "--pool", str(pool)]
    args += ["--eval", str(test), "--method", "kd", "--epochs", "1", "--batch-size", "32"]
    assert main([*args, *flags, "--device", "cpu", "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert f"pool {pool}: its classes {_shown(names)} {note} [red, green, blue, yellow]" in err
    assert f"evaluation set {test}: its classes" in err
    m = json.loads((tmp_path / "out" / "metrics.jsonl").read_text().splitlines()[-1])
    # the teacher (>0.9 accurate) agrees with the pool's labels once they are the teacher's
    assert m["selection_precision"] > 0.8
    per_class = m["eval_per_class"]  # red and blue evaluated, green and yellow absent
    assert per_class[0] is not None and per_class[2] is not None
    assert per_class[1] is None and per_class[3] is None
    # kd3 evaluate maps the same way: the teacher is right on both classes it is shown
    capsys.readouterr()
    argv = ["evaluate", str(world / "teacher" / "teacher.pt"), "--eval", str(test), "--json"]
    assert main([*argv, *flags]) == 0
    accuracy = json.loads(capsys.readouterr().out)
    assert accuracy["per_class"]["green"] is None and accuracy["per_class"]["red"] > 0.8


def _shown(names):
    return "[" + ", ".join(names) + "]"


def _trainer(world, out, cfg, callback=None):
    teacher, meta = load_model(world / "teacher" / "teacher.pt")
    pool = load_images(world / "pool.npz", 16)
    pool.images, pool.labels = pool.images[::2], pool.labels[::2]  # 144 images: fast
    return Trainer(
        cfg,
        pool,
        out,
        teacher,
        meta,
        load_images(world / "test.npz", 16),
        device="cpu",
        step_callback=callback,
        log=lambda m: None,
    )


def test_resume_after_cancellation_equals_an_uninterrupted_run(world, tmp_path):
    cfg = TrainConfig(method="kd3", student="resnet8", epochs=4, batch_size=16, seed=5)
    full = _trainer(world, tmp_path / "full", cfg).run()
    assert all(m["steps"] >= 1 for m in full.history)

    events = []

    def cancel_in_epoch_two(event):
        events.append(event)
        return event["event"] == "step" and event["epoch"] == 2 and event["step"] == 1

    with pytest.raises(TrainingCancelled):
        _trainer(world, tmp_path / "cut", cfg, cancel_in_epoch_two).run()
    assert any(e["event"] == "epoch" for e in events) and events[-1]["step"] == 1
    assert len((tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()) == 1
    with pytest.raises(DistillError, match="settings differ.*epochs=4 \\(now 5\\)"):
        _trainer(world, tmp_path / "cut", TrainConfig(**{**cfg.to_dict(), "epochs": 5})).run(
            resume=True
        )
    resumed = _trainer(world, tmp_path / "cut", cfg).run(resume=True)

    a = torch.load(full.student_path, weights_only=True)["state_dict"]
    b = torch.load(resumed.student_path, weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    timing = {"epoch_seconds", "selection_seconds", "images_per_second"}
    strip = [{k: v for k, v in m.items() if k not in timing} for m in full.history]
    assert strip == [{k: v for k, v in m.items() if k not in timing} for m in resumed.history]


@pytest.mark.parametrize(
    ("method", "options", "terms"),
    [
        ("kd", {}, {"kd"}),
        ("dfnd", {}, {"kd", "noise_adaptation"}),
        ("random", {}, {"kd"}),
        ("kd3", {}, {"wfa", "kd"}),
        ("kd3", {"selection": False}, {"wfa", "kd"}),
        ("kd3", {"sharing": False}, {"kd"}),
        ("kd3", {"mixing": True}, {"wfa", "kd", "contrast"}),
        ("kd3-paper", {"selection": False}, {"wfa", "contrast"}),
        ("kd3-paper", {"mixing": False}, {"wfa"}),
        ("kd3-paper", {"kd_weight": 1.0, "share_floor": 0.5}, {"wfa", "contrast", "kd"}),
        ("kd3-paper", {"augment": "padcrop"}, {"wfa", "contrast"}),
    ],
)
def test_every_method_and_ablation_trains(world, tmp_path, method, options, terms):
    cfg = TrainConfig(method=method, student="resnet8", epochs=1, batch_size=48, **options)
    trainer = _trainer(world, tmp_path, cfg)
    result = trainer.run()
    m = result.final
    assert set(m["losses"]) == terms | {"loss"}
    assert all(np.isfinite(v) for v in m["losses"].values())
    if method in ("dfnd", "random"):
        assert m["selected"] == 72  # half of the 144 pool images
    if method in ("kd", "dfnd", "random"):  # teacher argmax against the pool's hidden labels
        assert 0 < m["selection_precision"] <= 1 and len(m["selection_precision_per_class"]) == 4
    if method == "dfnd":
        assert 0.25 < m["dfnd_teacher_accuracy"] <= 1
    if options.get("selection") is False:
        assert m["selected"] == 144
    if "share_floor" in options:
        assert m["teacher_share"] >= 0.5
    _, meta = load_model(result.student_path)
    assert meta.kind == (
        "kd3-student" if method.startswith("kd3") and "sharing" not in options else "classifier"
    )
    # every distillation reports how well the pool covers each class, per epoch
    cover = m["pool_coverage"]
    assert len(cover["confident_per_class"]) == 4 and len(m["selected_per_class"]) == 4
    assert sum(m["selected_per_class"]) == m["selected"]


def test_feature_extractor_contract(world):
    extract = load_feature_extractor(world / "teacher" / "teacher.pt", device="cpu")
    images = np.load(world / "test.npz")["x"][:10]
    vectors = extract(images)
    assert vectors.dtype == np.float32 and vectors.shape == (10, 64) and extract.dim == 64
    model, meta = load_model(world / "teacher" / "teacher.pt")
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(meta.mean).view(1, 3, 1, 1)) / torch.tensor(meta.std).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model.forward_features(x).mean(dim=(2, 3)).numpy()
    assert np.allclose(vectors, expected, atol=1e-4)
    assert extract(images[:0]).shape == (0, 64)
    with pytest.raises(DistillError, match="expects uint8"):
        extract(images.astype(np.float32))


def test_export_torchscript_and_onnx(world, tmp_path, capsys):
    ckpt = world / "teacher" / "teacher.pt"
    assert main(["export", str(ckpt), "--out", str(tmp_path)]) == 0
    scripted = torch.jit.load(str(tmp_path / "model.torchscript.pt"))
    model, meta = load_model(ckpt)
    x = torch.rand(3, 3, 16, 16)
    norm = (x - torch.tensor(meta.mean).view(1, 3, 1, 1)) / torch.tensor(meta.std).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(scripted(x), model(norm), atol=1e-5)
    graph = onnx.load(str(tmp_path / "model.onnx"))
    onnx.checker.check_model(graph)
    assert [i.name for i in graph.graph.input] == ["images"]
    info = json.loads((tmp_path / "model.json").read_text())
    assert info["class_names"] == ["red", "green", "blue", "yellow"] and info["input_size"] == 16


def test_option_choices_are_what_the_trainer_implements():
    from distill.methods import DISTILL_METHODS, METHODS
    from distill.methods.kd3 import SELECTION_RULES
    from distill.options import DISTILL_METHODS as option_methods
    from distill.options import SELECTION_RULES as option_rules

    assert set(option_methods) == set(DISTILL_METHODS) and "supervised" in METHODS
    assert option_rules == SELECTION_RULES


def test_cycle_to_repeats_the_selection_evenly():
    from distill.trainer import cycle_to

    gen = torch.Generator().manual_seed(0)
    chosen = torch.tensor([3, 7, 11])
    drawn = cycle_to(chosen, 10, gen)
    assert len(drawn) == 10
    counts = torch.bincount(drawn, minlength=12)[chosen]
    assert counts.sum() == 10 and counts.max() - counts.min() <= 1
    assert set(drawn.tolist()) == {3, 7, 11}
    assert torch.equal(cycle_to(chosen, 2, gen), chosen)  # never fewer than selected


def test_recipe_defaults_and_explicit_settings():
    default, paper = TrainConfig(method="kd3"), TrainConfig(method="kd3-paper")
    assert (default.augment, default.selection_rule, default.kd_weight) == ("padcrop", "robust", 1)
    assert (default.epoch_size, default.mixing) == ("pool", False)
    assert (paper.augment, paper.crop_scale, paper.selection_rule) == ("rrc", (0.08, 1.0), "paper")
    assert paper.kd_weight == 0 and paper.share_floor == 0
    assert (paper.epoch_size, paper.mixing) == ("selection", True)
    assert TrainConfig(method="kd").epoch_size == "selection"
    assert TrainConfig(method="kd3", augment="rrc").augment == "rrc"  # what a user sets wins
    with pytest.raises(DistillError, match="unknown method 'kd4'"):
        TrainConfig(method="kd4")
    with pytest.raises(DistillError, match="training settings: augment: Input should be"):
        TrainConfig(method="kd", augment="mixup")
    with pytest.raises(DistillError, match="tau_min 0.9 is above tau_max 0.8"):
        TrainConfig(method="kd3", tau_min=0.9)


def test_thin_classes_are_reported():
    from distill.diagnostics import coverage

    logits = torch.zeros(1000, 3)
    logits[:600, 0] = 5.0
    logits[600:995, 1] = 5.0
    logits[995:, 2] = 5.0  # 5 confident images of class 2
    cover = coverage(logits, ["cat", "dog", "deer"])
    assert cover["confident_per_class"] == [600, 395, 5]
    assert cover["warnings"] == [
        "deer: 5 confident images of 1,000: the pool lacks this class; crawl more"
    ]
    # with the pool's own classes: the teacher's "cat" on images crawled as "deer" counts for
    # nothing, so a class the pool lacks is reported however confident the teacher is
    labels = torch.tensor([0] * 600 + [1] * 200 + [2] * 200)
    cover = coverage(logits, ["cat", "dog", "deer"], labels)
    assert cover["confident_per_class"] == [600, 200, 5]
    logits[800:, 0] = 9.0  # the deer images look like cats to the teacher
    cover = coverage(logits, ["cat", "dog", "deer"], labels)
    assert cover["confident_per_class"] == [600, 200, 0] and len(cover["warnings"]) == 1


def test_one_cycle_schedule_warms_up_then_anneals():
    from distill.trainer import lr_at

    cfg = TrainConfig(method="supervised", epochs=10, lr=0.2, schedule="onecycle")
    assert lr_at(cfg, 0) == pytest.approx(0.2 / 25)
    assert lr_at(cfg, 3) == pytest.approx(0.2)  # the peak at 30% of training
    assert lr_at(cfg, 1.5) == pytest.approx((0.2 / 25 + 0.2) / 2)
    assert lr_at(cfg, 10) == pytest.approx(0.2 / 25e4)
    values = [lr_at(cfg, e / 10) for e in range(30, 100)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False))


def test_robust_selection_keeps_a_tenth_of_the_pool_when_the_teacher_is_unsure(world, tmp_path):
    """A teacher with a zeroed classifier gives p = 1/4 everywhere: no threshold is passed, and
    the default still trains on the most confident 10% rather than on nothing."""
    from distill.checkpoints import ModelMeta
    from distill.models import create_model

    teacher = create_model("resnet8", 4)
    torch.nn.init.zeros_(teacher.head.weight)
    torch.nn.init.zeros_(teacher.head.bias)
    meta = ModelMeta(arch="resnet8", num_classes=4, input_size=16)
    pool = load_images(world / "pool.npz", 16)
    cfg = TrainConfig(method="kd3", epochs=1, batch_size=16, epoch_size="selection")
    trainer = Trainer(cfg, pool, tmp_path, teacher, meta, device="cpu", log=lambda m: None)
    m = trainer.run().final
    assert m["selected"] == round(0.1 * len(pool)) and m["steps"] == 2  # 16 + 13
    # epoch_size "pool" (the default): the same 29 images, cycled to the pool's 288 (18 steps)
    cfg = TrainConfig(method="kd3", epochs=1, batch_size=16)
    trainer = Trainer(cfg, pool, tmp_path / "pool", teacher, meta, device="cpu", log=print)
    m = trainer.run().final
    assert m["selected"] == 29 and sum(m["selected_per_class"]) == 29
    assert m["steps"] == len(pool) // 16


def test_bn_recalibration_sets_the_statistics_of_the_final_weights(world, tmp_path):
    """With recalibration the saved student's BatchNorm means are those of its own final
    weights on the clean pool images, not a running average over earlier weights."""
    cfg = TrainConfig(method="kd", student="resnet8", epochs=2, batch_size=48, bn_recalibration=144)
    trainer = _trainer(world, tmp_path, cfg)
    result = trainer.run()
    student, _ = load_model(result.student_path)
    x = trainer.norm.eval(trainer.train_set.images)  # all 144 pool images, 3 batches of 48
    with torch.no_grad():
        expected = student.conv1(x).mean(dim=(0, 2, 3))
    assert torch.allclose(student.bn1.running_mean, expected, atol=1e-4)
    plain = _trainer(
        world, tmp_path / "plain", TrainConfig(**{**cfg.to_dict(), "bn_recalibration": 0})
    )
    plain_student, _ = load_model(plain.run().student_path)
    with torch.no_grad():
        lagging = plain_student.conv1(x).mean(dim=(0, 2, 3))
    assert not torch.allclose(plain_student.bn1.running_mean, lagging, atol=1e-3)


def test_a_run_saved_before_a_new_setting_existed_still_resumes(world, tmp_path):
    cfg = TrainConfig(method="kd", student="resnet8", epochs=1, batch_size=48)
    _trainer(world, tmp_path, cfg).run()
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    # as an older version saved it: a plain field, and a recipe field (what it did then)
    del state["config"]["bn_recalibration"], state["config"]["epoch_size"]
    torch.save(state, tmp_path / "state.pt")
    resumed = _trainer(world, tmp_path, cfg).run(resume=True)
    assert len(resumed.history) == 1
