"""The interface every distillation method implements, and what the trainer hands it.

A method decides three things: which student it trains (and which extra trainable modules it
needs), which pool images an epoch trains on, and the loss of one batch. The trainer only
loops, checkpoints and reports. A method's `recipe` holds its defaults for the TrainConfig
fields that differ between methods (augmentation, selection rule, extra loss terms); what a
user sets explicitly wins.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from distill.data import ImageSet, Normalizer
from distill.distributed import Ranks


@dataclass
class Context:
    """What a method may use: the run's settings, data and frozen teacher."""

    cfg: object  # TrainConfig
    train_set: ImageSet
    norm: Normalizer
    num_classes: int
    device: torch.device
    infer_batch: int
    teacher: nn.Module | None = None
    # teacher logits on the clean (un-augmented) pool, computed once by the trainer
    teacher_logits: torch.Tensor | None = None
    ranks: Ranks = Ranks()  # the run's processes: a pass over the pool is split between them


class Method:
    name = ""
    summary = ""  # one line for --help and the report
    recipe: dict = {}  # TrainConfig defaults of this method
    needs_teacher = True

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.cfg = ctx.cfg

    def build_student(self, backbone: nn.Module) -> nn.Module:
        return backbone

    def extra_modules(self, backbone: nn.Module) -> dict[str, nn.Module]:
        """Trainable modules besides the student (they are checkpointed with it)."""
        return {}

    def bind(self, modules: nn.ModuleDict) -> None:
        """Called once the trainable modules exist (on the training device)."""
        self.modules = modules
        self.student = modules["student"]

    def prepare(self) -> dict:
        """Once before the first epoch (also after a resume); returns diagnostics for every
        epoch's metrics."""
        return {}

    def select(self, epoch: int, gen: torch.Generator) -> tuple[torch.Tensor, dict]:
        """Indices of the pool images this epoch trains on, and the epoch's diagnostics."""
        return torch.arange(len(self.ctx.train_set)), {"selected": len(self.ctx.train_set)}

    def loss(self, x: torch.Tensor, idx: torch.Tensor, gen: torch.Generator) -> dict:
        """The loss terms (tensors) of one augmented batch x of pool images idx."""
        raise NotImplementedError

    @property
    def student_kind(self) -> str:
        return "classifier"
