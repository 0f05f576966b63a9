"""Baseline losses and selections: Hinton KD, DFND (confidence top-N + noise adaptation), random."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def kd_loss(z_s: torch.Tensor, z_t: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """KL(softmax(z_T/T) || softmax(z_S/T)) * T^2, averaged over the batch."""
    log_p_s = F.log_softmax(z_s.float() / temperature, dim=1)
    log_p_t = F.log_softmax(z_t.float() / temperature, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * temperature**2


def top_confident(confidence: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the `count` most confident images (DFND's selection), in pool order."""
    count = max(1, min(count, confidence.numel()))
    return torch.topk(confidence, count).indices.sort().values


def random_subset(n: int, count: int, generator: torch.Generator) -> torch.Tensor:
    count = max(1, min(count, n))
    return torch.randperm(n, generator=generator)[:count].sort().values


class NoiseAdaptation(nn.Module):
    """DFND's transition matrix Q: diagonal fixed to the teacher's accuracy, each row's
    off-diagonal entries softmax(theta_row) * (1 - accuracy), theta learnable."""

    def __init__(self, num_classes: int, teacher_accuracy: float):
        super().__init__()
        self.num_classes = num_classes
        self.accuracy = float(teacher_accuracy)
        self.theta = nn.Parameter(torch.zeros(num_classes, num_classes))

    def matrix(self) -> torch.Tensor:
        eye = torch.eye(self.num_classes, dtype=torch.bool, device=self.theta.device)
        off = torch.softmax(self.theta.masked_fill(eye, float("-inf")), dim=1)
        return off * (1.0 - self.accuracy) + eye * self.accuracy

    def loss(self, z_s: torch.Tensor, z_t: torch.Tensor) -> torch.Tensor:
        """NLL(log(softmax(z_S) Q), argmax z_T)."""
        with torch.autocast(z_s.device.type, enabled=False):
            noisy = torch.softmax(z_s.float(), dim=1) @ self.matrix()
        return F.nll_loss(torch.log(noisy.clamp_min(1e-12)), z_t.argmax(dim=1))
