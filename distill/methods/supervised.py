"""Plain supervised training on labelled images (teachers and the upper bound)."""

from __future__ import annotations

import torch.nn.functional as F

from distill.methods.base import Method


class Supervised(Method):
    name = "supervised"
    summary = "cross-entropy on labelled images (kd3 train-teacher)"
    recipe = {"augment": "padcrop"}
    needs_teacher = False

    def loss(self, x, idx, gen):
        return {"ce": F.cross_entropy(self.student(x).float(), self.ctx.train_set.labels[idx])}
