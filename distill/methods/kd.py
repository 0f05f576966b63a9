"""Hinton KD on the whole pool, and KD on a random subset of DFND's size."""

from __future__ import annotations

import torch

from distill import baselines
from distill.methods.base import Method


class KD(Method):
    name = "kd"
    summary = "Hinton KD (T=4) on every pool image"
    recipe = {"augment": "padcrop"}

    def loss(self, x, idx, gen):
        with torch.no_grad():
            z_t = self.ctx.teacher(x)
        z_s = self.student(x)
        return {"kd": baselines.kd_loss(z_s, z_t, self.cfg.kd_temperature)}


class FixedSubsetKD(KD):
    """KD on one subset of the pool chosen before training."""

    def choose(self) -> torch.Tensor:
        raise NotImplementedError

    def prepare(self):
        self.subset = self.choose()
        return {}

    def select(self, epoch, gen):
        return self.subset, {"selected": len(self.subset)}


class RandomSubset(FixedSubsetKD):
    name = "random"
    summary = "KD on a random subset of the pool (DFND's size)"

    def choose(self):
        n = len(self.ctx.train_set)
        count = max(1, round(self.cfg.subset_fraction * n))
        gen = torch.Generator().manual_seed(self.cfg.seed + 7919)
        return baselines.random_subset(n, count, gen)
