"""DFND (Chen et al., CVPR 2021): KD on the teacher's most confident images plus a
noise-adaptation loss."""

from __future__ import annotations

import torch

from distill import baselines
from distill.methods.kd import FixedSubsetKD


class DFND(FixedSubsetKD):
    name = "dfnd"
    summary = "KD + noise adaptation on the teacher's most confident half of the pool"

    def extra_modules(self, backbone):
        return {"noise": baselines.NoiseAdaptation(self.ctx.num_classes, 1.0)}

    def choose(self):
        logits = self.ctx.teacher_logits
        count = max(1, round(self.cfg.subset_fraction * len(logits)))
        conf = torch.softmax(logits, 1).max(1).values.cpu()
        subset = baselines.top_confident(conf, count)
        acc = self.cfg.dfnd_teacher_accuracy
        self.accuracy = float(conf[subset].mean()) if acc is None else acc
        self.modules["noise"].accuracy = self.accuracy
        return subset

    def select(self, epoch, gen):
        subset, info = super().select(epoch, gen)
        return subset, {**info, "dfnd_teacher_accuracy": self.accuracy}

    def loss(self, x, idx, gen):
        with torch.no_grad():
            z_t = self.ctx.teacher(x)
        z_s = self.student(x)
        return {
            "kd": baselines.kd_loss(z_s, z_t, self.cfg.kd_temperature),
            "noise_adaptation": self.modules["noise"].loss(z_s, z_t),
        }
