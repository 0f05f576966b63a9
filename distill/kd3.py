"""KD3's formulas and modules, as docs/kd3-method.md describes them (released code KDDD).

Component 1 (dynamic instance selection): teacher_share, class_thresholds, select_instances.
Component 2 (classifier sharing, weighted feature alignment): Projector, SharedHeadStudent,
instance_weights, wfa_loss.
Component 3 (MixDistribution, contrastive alignment): mix_distribution, ContrastHead, nt_xent.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


# -- Component 1 ---------------------------------------------------------------------------------
def teacher_share(epoch: int, epochs: int) -> float:
    """a_e for 0-based `epoch` of `epochs`: 1 - exp(-5((e+1)/(2E/3) - 1)^2) for e < E/2, else 0.

    With E = 240 this is the released code's ramp (160 = 2E/3, 120 = E/2).
    """
    if epoch >= epochs / 2:
        return 0.0
    return 1.0 - math.exp(-5.0 * ((epoch + 1) / (2.0 * epochs / 3.0) - 1.0) ** 2)


def class_thresholds(counts: torch.Tensor, tau: float = 0.95) -> torch.Tensor:
    """FlexMatch thresholds tau_c = tau * b_c / (2 - b_c) with b_c = N_c / max N."""
    counts = torch.as_tensor(counts, dtype=torch.float64)
    top = counts.max()
    beta = counts / top if top > 0 else torch.zeros_like(counts)
    return tau * beta / (2.0 - beta)


@dataclass
class Selection:
    mask: torch.Tensor  # (N,) bool: the images S_e trained on this epoch
    pseudo_labels: torch.Tensor  # (N,) int64 argmax of the blended distribution
    confidence: torch.Tensor  # (N,) float max probability
    counts: torch.Tensor  # (C,) argmax counts N_c over all images
    selected_per_class: torch.Tensor  # (C,) selected images per pseudo-label
    thresholds: torch.Tensor  # (C,)


def select_instances(
    z_t: torch.Tensor,
    z_s: torch.Tensor,
    share: float,
    tau: float = 0.95,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> Selection:
    """S_e = {i : p_i > tau_{y_i}} from the blended logits z = a z_T + (1 - a) z_S, with the
    class thresholds clamped into `bounds` ((0, 1), no clamp, is the paper's rule)."""
    conf, labels = blended_vote(z_t, z_s, share)
    return select_confident(conf, labels, z_t.shape[1], tau, bounds)


def blended_vote(
    z_t: torch.Tensor, z_s: torch.Tensor, share: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's confidence and pseudo-label: max and argmax of softmax(a z_T + (1-a) z_S).
    Row by row, so a pool can be voted on a chunk at a time."""
    q = torch.softmax(share * z_t.float() + (1.0 - share) * z_s.float(), dim=1)
    return q.max(dim=1)


def select_confident(
    conf: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    tau: float = 0.95,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> Selection:
    """select_instances from the whole pool's votes (blended_vote)."""
    counts = torch.bincount(labels, minlength=num_classes)
    thresholds = class_thresholds(counts, tau).clamp(*bounds).to(conf.device, torch.float32)
    mask = conf > thresholds[labels]
    return Selection(
        mask=mask,
        pseudo_labels=labels,
        confidence=conf,
        counts=counts,
        selected_per_class=torch.bincount(labels[mask], minlength=num_classes),
        thresholds=thresholds,
    )


# -- Component 2 ---------------------------------------------------------------------------------
class Projector(nn.Module):
    """conv1x1(C_S->C_T/2)-BN-ReLU, conv3x3(C_T/2->C_T/2)-BN-ReLU, conv1x1(C_T/2->C_T)-BN-ReLU."""

    def __init__(self, student_channels: int, teacher_channels: int):
        super().__init__()
        mid = max(1, teacher_channels // 2)
        self.net = nn.Sequential(
            nn.Conv2d(student_channels, mid, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, padding=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, teacher_channels, 1, bias=False),
            nn.BatchNorm2d(teacher_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, fmap):
        return self.net(fmap)


class SharedHeadStudent(nn.Module):
    """The deployed KD3 student: backbone, projector and the teacher's frozen classifier.

    It exposes the same parts as every zoo model (forward_features is P(F_S(x)), pooled feature
    GAP of that, head the teacher's classifier), so it can be evaluated, exported and used as a
    feature extractor like any other model.
    """

    def __init__(self, backbone: nn.Module, teacher: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.projector = Projector(backbone.feature_dim, teacher.feature_dim)
        self.head = copy.deepcopy(teacher.head)
        for p in self.head.parameters():
            p.requires_grad_(False)
        self.feature_dim = teacher.feature_dim

    @staticmethod
    def pool(fmap):
        return torch.flatten(F.adaptive_avg_pool2d(fmap, 1), 1)

    def forward_features(self, x):
        return self.projector(self.backbone.forward_features(x))

    def forward(self, x):
        return self.head(self.pool(self.forward_features(x)))

    def train(self, mode: bool = True):
        super().train(mode)
        self.head.eval()  # frozen: no BN/dropout updates in the shared classifier
        return self


def instance_weights(z_s: torch.Tensor, z_t: torch.Tensor) -> torch.Tensor:
    """w_i = sigmoid(||z_S,i - z_T,i||_2), detached; in [0.5, 1)."""
    return torch.sigmoid(torch.linalg.vector_norm((z_s - z_t).float(), dim=1)).detach()


def match_spatial(h_s: torch.Tensor, h_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive-average-pool the larger of two feature maps to the smaller's size."""
    hs, ht = h_s.shape[-2:], h_t.shape[-2:]
    if hs[0] * hs[1] > ht[0] * ht[1]:
        h_s = F.adaptive_avg_pool2d(h_s, ht)
    elif ht[0] * ht[1] > hs[0] * hs[1]:
        h_t = F.adaptive_avg_pool2d(h_t, hs)
    return h_s, h_t


def wfa_loss(h_s: torch.Tensor, h_t: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean over batch, channels and positions of w_i (h_S,i - h_T,i)^2."""
    h_s, h_t = match_spatial(h_s.float(), h_t.float())
    per_image = (h_s - h_t).pow(2).flatten(1).mean(dim=1)
    return (weights * per_image).mean()


# -- Component 3 ---------------------------------------------------------------------------------
def sample_beta(alpha: float, n: int, generator=None, device=None) -> torch.Tensor:
    """n samples of Beta(alpha, alpha) with Johnk's rejection method (works with a Generator).

    Torch's own Beta sampler takes no generator; Johnk's method is exact and, in log space,
    stable for the small alpha MixStyle uses.
    """
    out = torch.empty(n, dtype=torch.float64, device=device)
    todo = torch.arange(n, device=device)
    while todo.numel():
        u = torch.rand(todo.numel(), 2, generator=generator, dtype=torch.float64, device=device)
        log_x = torch.log(u[:, 0]) / alpha
        log_y = torch.log(u[:, 1]) / alpha
        accept = torch.logaddexp(log_x, log_y) <= 0
        out[todo[accept]] = torch.sigmoid(log_x - log_y)[accept]
        todo = todo[~accept]
    return out


def mix_distribution(
    x: torch.Tensor,
    alpha: float = 0.1,
    generator: torch.Generator | None = None,
    return_mixing: bool = False,
):
    """MixStyle on normalised images (p = 1): mix each image's channel statistics with a random
    partner's, lambda ~ Beta(alpha, alpha) per image. Returns x~ (and (perm, lam) if asked)."""
    b = x.shape[0]
    perm = torch.randperm(b, generator=generator, device=generator.device if generator else "cpu")
    perm = perm.to(x.device)
    lam = sample_beta(alpha, b, generator, generator.device if generator else "cpu")
    lam = lam.to(x.device, x.dtype).view(b, 1, 1, 1)
    mixed = _mix_with(x, perm, lam)
    return (mixed, perm, lam.flatten()) if return_mixing else mixed


def _mix_with(x: torch.Tensor, perm: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    mu = x.mean(dim=(2, 3), keepdim=True).detach()
    sigma = (x.var(dim=(2, 3), keepdim=True) + 1e-6).sqrt().detach()
    normed = (x - mu) / sigma
    mu_mix = lam * mu + (1 - lam) * mu[perm]
    sigma_mix = lam * sigma + (1 - lam) * sigma[perm]
    return normed * sigma_mix + mu_mix


class ContrastHead(nn.Module):
    """h_s: Linear(dim(v_S) -> 128) followed by L2 normalisation."""

    def __init__(self, in_dim: int, out_dim: int = 128):
        super().__init__()
        self.fc = nn.Linear(in_dim, out_dim)

    def forward(self, v):
        return F.normalize(self.fc(v), dim=1)


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.3) -> torch.Tensor:
    """SimCLR's NT-Xent over 2B embeddings: a_k and b_k are positives, all other views negatives."""
    z = F.normalize(torch.cat([a, b]).float(), dim=1)
    n = a.shape[0]
    with torch.autocast(z.device.type, enabled=False):  # similarities in float32 under bf16
        sim = z @ z.t() / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, positives)
