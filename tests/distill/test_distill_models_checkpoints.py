"""The model zoo's uniform interface and checkpoint loading (kd3, bare, torchvision, errors)."""

import pickle

import pytest
import torch
import torchvision

from distill.checkpoints import ModelMeta, load_model, save_model
from distill.errors import CheckpointError, DistillError
from distill.models import create_model, final_linear, model_names
from workers.cli import main

torch.set_num_threads(1)


@pytest.mark.parametrize("name", model_names())
def test_every_model_exposes_feature_map_pooled_feature_and_classifier(name):
    model = create_model(name, 3).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        fmap = model.forward_features(x)
        pooled = model.pool(fmap)
        logits = model(x)
    assert fmap.ndim == 4 and fmap.shape[1] == model.feature_dim
    assert pooled.shape == (2, model.feature_dim)
    assert torch.allclose(logits, model.head(pooled), atol=1e-5)
    assert logits.shape == (2, 3)
    assert final_linear(model).out_features == 3


def test_zoo_has_the_issue_architectures():
    wanted = {"resnet8", "resnet20", "resnet32", "resnet56", "resnet18_cifar", "resnet34_cifar"}
    wanted |= {"wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2", "vgg8", "vgg11", "vgg13", "vgg16"}
    wanted |= {"mobilenetv2", "resnet18", "resnet34", "resnet50", "mobilenet_v3_large"}
    wanted |= {"efficientnet_b0"}
    assert wanted <= set(model_names())
    with pytest.raises(DistillError, match="unknown architecture 'resnet9'"):
        create_model("resnet9", 10)


def test_kd3_checkpoint_round_trip_keeps_weights_and_metadata(tmp_path):
    model = create_model("resnet8", 4)
    meta = ModelMeta("resnet8", 4, ["a", "b", "c", "d"], 16, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    meta.summary = {"eval_accuracy": 0.5}
    save_model(tmp_path / "m.pt", model, meta)
    body = torch.load(tmp_path / "m.pt", weights_only=True)  # plain data only
    assert body["format"] == "kd3-model" and body["arch"] == "resnet8"
    loaded, got = load_model(tmp_path / "m.pt")
    assert got.class_names == ["a", "b", "c", "d"] and got.input_size == 16
    assert got.mean == (0.1, 0.2, 0.3) and got.summary == {"eval_accuracy": 0.5}
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))


def test_bare_and_wrapped_state_dicts_need_arch_and_infer_classes(tmp_path):
    model = create_model("wrn_16_1", 6).eval()
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, tmp_path / "wrapped.pt")
    with pytest.raises(CheckpointError, match="pass --arch"):
        load_model(tmp_path / "bare.pt")
    x = torch.randn(2, 3, 32, 32)
    for name in ("bare.pt", "wrapped.pt"):
        loaded, meta = load_model(tmp_path / name, arch="wrn_16_1")
        assert meta.num_classes == 6
        with torch.no_grad():
            assert torch.equal(loaded(x), model(x))


def test_torchvision_state_dict_loads_unchanged(tmp_path):
    reference = torchvision.models.resnet18(num_classes=7).eval()
    torch.save(reference.state_dict(), tmp_path / "tv.pt")
    loaded, meta = load_model(tmp_path / "tv.pt", arch="resnet18")
    assert meta.num_classes == 7 and meta.input_size == 224
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded(x), reference(x), atol=1e-6)


def test_wrong_architecture_or_class_count_is_one_line(tmp_path):
    torch.save(create_model("resnet8", 10).state_dict(), tmp_path / "r8.pt")
    with pytest.raises(CheckpointError) as err:
        load_model(tmp_path / "r8.pt", arch="resnet20")
    assert "do not fit resnet20 with 10 classes" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(
        CheckpointError, match=r"shape mismatch.*head.weight \(10, 64\) vs \(5, 64\)"
    ):
        load_model(tmp_path / "r8.pt", arch="resnet8", num_classes=5)
    save_model(tmp_path / "kd3.pt", create_model("resnet8", 3), ModelMeta("resnet8", 3))
    with pytest.raises(CheckpointError, match="holds a resnet8, not the vgg8 given"):
        load_model(tmp_path / "kd3.pt", arch="vgg8")


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_files_that_are_not_checkpoints_are_refused(tmp_path, capsys):
    (tmp_path / "junk.pt").write_bytes(b"\x00not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_model(tmp_path / "junk.pt")
    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"state_dict": Payload()}))
    torch.save({"state_dict": Payload()}, tmp_path / "evil2.pt")
    for name in ("evil.pt", "evil2.pt"):
        with pytest.raises(CheckpointError):
            load_model(tmp_path / name, arch="resnet8")
    assert "must never run" not in capsys.readouterr().out
    torch.save({"weights": [1, 2, 3]}, tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="expected a kd3 checkpoint, a state_dict"):
        load_model(tmp_path / "list.pt", arch="resnet8")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_model(tmp_path / "missing.pt")


def test_cli_prints_one_line_for_a_bad_checkpoint(tmp_path, capsys):
    (tmp_path / "junk.pt").write_bytes(b"garbage")
    (tmp_path / "e.npz").write_bytes(b"")
    assert main(["evaluate", str(tmp_path / "junk.pt"), "--eval", str(tmp_path / "e.npz")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kd3 evaluate: error:") and "not a PyTorch checkpoint" in err
    assert len(err.splitlines()) == 1
