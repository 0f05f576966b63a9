"""The model zoo: a registry of classifiers that all expose their parts the same way.

Every model built by `create_model(name, num_classes)` has
    model.forward_features(x) -> last convolutional feature map F(x), (B, C, H, W)
    model.pool(fmap)          -> pooled feature v(x), (B, C) (global average pool)
    model.head                -> the module that maps v(x) to logits (a Linear for all CIFAR
                                 models and the ResNets; MobileNetV3/EfficientNet's classifier
                                 block, whose last layer is the Linear)
    model.feature_dim         -> C
and forward(x) == head(pool(forward_features(x))). KD3 needs exactly these three parts.

The torchvision architectures subclass torchvision's ResNet, or hold the parts of the model
torchvision's public builder makes (MobileNetV3, EfficientNet), so their state_dict keys are
torchvision's and a plain torchvision state_dict loads into them unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models import mobilenetv2 as tv_mobilenetv2
from torchvision.models import resnet as tv_resnet

from distill.errors import DistillError

_REGISTRY: dict[str, Callable[[int], nn.Module]] = {}
# Input size each architecture is meant for (the teacher's metadata overrides it).
DEFAULT_INPUT_SIZE: dict[str, int] = {}


def register(name: str, input_size: int = 32):
    def wrap(builder: Callable[[int], nn.Module]):
        _REGISTRY[name] = builder
        DEFAULT_INPUT_SIZE[name] = input_size
        return builder

    return wrap


def model_names() -> list[str]:
    return sorted(_REGISTRY)


def check_arch(name: str) -> str:
    if name not in _REGISTRY:
        raise DistillError(f"unknown architecture '{name}'; known: {', '.join(model_names())}")
    return name


def create_model(name: str, num_classes: int) -> nn.Module:
    check_arch(name)
    if num_classes < 1:
        raise DistillError(f"num_classes must be at least 1, got {num_classes}")
    model = _REGISTRY[name](num_classes)
    model.arch = name
    return model


class UniformClassifier(nn.Module):
    """Mixin giving forward/pool in terms of forward_features and head."""

    @staticmethod
    def pool(fmap: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(fmap, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.forward_features(x)))


def final_linear(model: nn.Module) -> nn.Linear:
    """The last nn.Linear of the model's head (the classifier proper)."""
    linears = [m for m in model.head.modules() if isinstance(m, nn.Linear)]
    return linears[-1]


# -- CIFAR-style ResNets (3x3 stem, no max-pool) -------------------------------------------------
class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(UniformClassifier):
    def __init__(self, widths: list[int], blocks: list[int], num_classes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages, cin = [], widths[0]
        for i, (width, n) in enumerate(zip(widths[1:], blocks, strict=True)):
            layers = []
            for j in range(n):
                layers.append(BasicBlock(cin, width, 2 if (j == 0 and i > 0) else 1))
                cin = width
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.feature_dim = cin
        self.head = nn.Linear(cin, num_classes)
        _init_weights(self)

    def forward_features(self, x):
        return self.stages(F.relu(self.bn1(self.conv1(x))))


def _cifar_resnet(depth: int) -> Callable[[int], nn.Module]:
    n = (depth - 2) // 6
    return lambda k: CifarResNet([16, 16, 32, 64], [n, n, n], k)


for _depth in (8, 20, 32, 56):
    register(f"resnet{_depth}")(_cifar_resnet(_depth))


@register("resnet18_cifar")
def _resnet18_cifar(k):
    return CifarResNet([64, 64, 128, 256, 512], [2, 2, 2, 2], k)


@register("resnet34_cifar")
def _resnet34_cifar(k):
    return CifarResNet([64, 64, 128, 256, 512], [3, 4, 6, 3], k)


# -- Wide ResNets (pre-activation) ---------------------------------------------------------------
class WideBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(out)
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return out + skip


class WideResNet(UniformClassifier):
    def __init__(self, depth: int, widen: int, num_classes: int):
        super().__init__()
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        stages, cin = [], widths[0]
        for i, width in enumerate(widths[1:]):
            layers = []
            for j in range(n):
                layers.append(WideBlock(cin, width, 2 if (j == 0 and i > 0) else 1))
                cin = width
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(cin)
        self.feature_dim = cin
        self.head = nn.Linear(cin, num_classes)
        _init_weights(self)

    def forward_features(self, x):
        return F.relu(self.bn(self.stages(self.conv1(x))))


for _d, _w in ((16, 1), (16, 2), (40, 1), (40, 2)):
    register(f"wrn_{_d}_{_w}")(lambda k, d=_d, w=_w: WideResNet(d, w, k))


# -- VGG with BatchNorm --------------------------------------------------------------------------
_VGG_CFG = {
    8: [64, "M", 128, "M", 256, "M", 512, "M", 512],
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
}


class VGG(UniformClassifier):
    def __init__(self, cfg: list, num_classes: int):
        super().__init__()
        layers, cin = [], 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1, bias=False), nn.BatchNorm2d(v)]
                layers.append(nn.ReLU(inplace=True))
                cin = v
        self.features = nn.Sequential(*layers)
        self.feature_dim = cin
        self.head = nn.Linear(cin, num_classes)
        _init_weights(self)

    def forward_features(self, x):
        return self.features(x)


for _d in _VGG_CFG:
    register(f"vgg{_d}")(lambda k, d=_d: VGG(_VGG_CFG[d], k))


# -- MobileNetV2 for 32x32 inputs (stride-1 stem and first stages) -------------------------------
class CifarMobileNetV2(UniformClassifier):
    SETTING = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1)]
    SETTING += [(6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, num_classes: int, last_channel: int = 1280):
        super().__init__()
        layers = [nn.Conv2d(3, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6(True)]
        cin = 32
        for t, c, n, s in self.SETTING:
            for i in range(n):
                layers.append(tv_mobilenetv2.InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers += [
            nn.Conv2d(cin, last_channel, 1, bias=False),
            nn.BatchNorm2d(last_channel),
            nn.ReLU6(True),
        ]
        self.features = nn.Sequential(*layers)
        self.feature_dim = last_channel
        self.head = nn.Linear(last_channel, num_classes)
        _init_weights(self)

    def forward_features(self, x):
        return self.features(x)


register("mobilenetv2")(CifarMobileNetV2)


# -- torchvision ImageNet architectures ----------------------------------------------------------
class TVResNet(UniformClassifier, tv_resnet.ResNet):
    @property
    def head(self):
        return self.fc

    @property
    def feature_dim(self):
        return self.fc.in_features

    def forward_features(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class TVFeaturesClassifier(UniformClassifier):
    """A torchvision model of the features -> avgpool -> classifier form (MobileNetV3,
    EfficientNet), built by torchvision's public builder; its parts are registered under
    their torchvision names, so the state_dict keys are torchvision's."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.features = model.features
        self.avgpool = model.avgpool
        self.classifier = model.classifier

    @property
    def head(self):
        return self.classifier

    @property
    def feature_dim(self) -> int:  # the input of the classifier's first Linear
        return next(m for m in self.classifier.modules() if isinstance(m, nn.Linear)).in_features

    def forward_features(self, x):
        return self.features(x)


_TV_RESNETS = {
    "resnet18": (tv_resnet.BasicBlock, [2, 2, 2, 2]),
    "resnet34": (tv_resnet.BasicBlock, [3, 4, 6, 3]),
    "resnet50": (tv_resnet.Bottleneck, [3, 4, 6, 3]),
}
for _name, (_block, _layers) in _TV_RESNETS.items():
    register(_name, input_size=224)(lambda k, b=_block, la=_layers: TVResNet(b, la, num_classes=k))


# torchvision's public builders, untrained (weights=None), for their ImageNet architectures.
for _name in ("mobilenet_v3_large", "mobilenet_v3_small", "efficientnet_b0"):
    register(_name, input_size=224)(
        lambda k, n=_name: TVFeaturesClassifier(torchvision.models.get_model(n, num_classes=k))
    )


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
