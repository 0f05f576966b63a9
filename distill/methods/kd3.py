"""KD3 (Tang et al., ICCV 2023): dynamic instance selection, classifier sharing with weighted
feature alignment, MixDistribution with contrastive alignment (formulas in distill/kd3.py).

`kd3-paper` is the released code's recipe. `kd3`, the default, keeps selection and classifier
sharing and changes what the validation runs showed to matter on keyword-crawled pools
(bench/results/):
  - epochs as long as the pool: the selected images are cycled until an epoch has as many as
    the pool, so that selecting half the pool does not also halve the optimizer steps;
  - no MixDistribution / contrastive term (off was better on val, and is cheaper);
  - augmentation: pad-4 random crop + flip instead of RandomResizedCrop(0.08-1) at 32 px;
  - a Hinton KD term (T=4) on the shared head's logits beside the feature alignment;
  - the "robust" selection rule: the teacher keeps at least half the vote, class thresholds
    are clamped to [tau_min, tau_max] (no class admitted on near-zero confidence, none shut
    out because a weak student predicts it everywhere), selection looks at clean views, and
    at least MIN_SELECTED_SHARE of the pool is kept.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill import baselines, kd3
from distill.evaluation import autocast_for
from distill.methods.base import Method
from distill.options import SELECTION_RULES  # noqa: F401  (the rules implemented here)

# The robust rule never trains on less than this share of the pool: when the thresholds pass
# fewer images (a teacher unsure of everything), it takes the most confident ones.
MIN_SELECTED_SHARE = 0.1


class KD3(Method):
    name = "kd3"
    summary = (
        "KD3 with the recipe chosen on validation: selection + classifier sharing, epochs as "
        "long as the pool, no MixDistribution, pad-crop augmentation, + KD term on the shared "
        "head, robust selection (see kd3-paper for the paper's)"
    )
    recipe = {
        "augment": "padcrop",
        "selection_rule": "robust",
        "kd_weight": 1.0,
        "share_floor": 0.5,
        "epoch_size": "pool",
        "mixing": False,
    }

    @property
    def shared(self) -> bool:
        return self.cfg.sharing

    @property
    def student_kind(self) -> str:
        return "kd3-student" if self.shared else "classifier"

    def build_student(self, backbone):
        self.backbone = backbone
        return kd3.SharedHeadStudent(backbone, self.ctx.teacher) if self.shared else backbone

    def extra_modules(self, backbone):
        return {"contrast": kd3.ContrastHead(backbone.feature_dim)} if self.cfg.mixing else {}

    # -- Component 1: which images this epoch trains on ------------------------------------------
    def teacher_share(self, epoch: int) -> float:
        return max(kd3.teacher_share(epoch, self.cfg.epochs), self.cfg.share_floor)

    def select(self, epoch, gen):
        n = len(self.ctx.train_set)
        if not self.cfg.selection:
            return torch.arange(n), {"selected": n}
        share = self.teacher_share(epoch)
        conf, labels = self.selection_votes(share, gen)
        bounds = (self.cfg.tau_min, self.cfg.tau_max) if self.robust else (0.0, 1.0)
        sel = kd3.select_confident(conf, labels, self.ctx.num_classes, self.cfg.tau, bounds)
        chosen = sel.mask.nonzero().flatten().cpu()
        floor = round(MIN_SELECTED_SHARE * n)
        if self.robust and len(chosen) < floor:  # an unsure teacher: its most confident images
            chosen = torch.topk(sel.confidence, floor).indices.sort().values.cpu()
            sel.selected_per_class = torch.bincount(
                sel.pseudo_labels.cpu()[chosen], minlength=self.ctx.num_classes
            )
        info = {
            "teacher_share": share,
            "selected": len(chosen),
            "selected_per_class": sel.selected_per_class.tolist(),
            "argmax_counts": sel.counts.tolist(),
            "thresholds": [round(t, 4) for t in sel.thresholds.tolist()],
            "pseudo_labels": sel.pseudo_labels.cpu()[chosen],  # for diagnostics, not logged
        }
        return chosen, info

    @property
    def robust(self) -> bool:
        return self.cfg.selection_rule == "robust"

    @torch.inference_mode()
    def selection_votes(self, share: float, gen: torch.Generator):
        """The blended vote (confidence, pseudo-label) of teacher and student (eval mode) on
        every pool image, a chunk at a time, so no model's logits of the whole pool are held
        on the device: on one augmented view as in the paper, or on the clean images under the
        robust rule (the teacher's logits are then those computed once). A model whose share
        of the blend is 0 is not run."""
        ctx, student, cfg = self.ctx, self.student, self.cfg
        student.eval()
        n = len(ctx.train_set)
        start, stop = ctx.ranks.shard(n)  # this rank's part; all gather the votes
        votes = []
        with autocast_for(ctx.device):
            for part in ctx.train_set.part(start, stop).split(ctx.infer_batch):
                end = start + len(part)
                zero = torch.zeros(len(part), ctx.num_classes, device=ctx.device)
                if self.robust:
                    x = ctx.norm.eval(part)
                    z_t = ctx.teacher_logits[start:end].to(ctx.device)
                else:
                    x = ctx.norm.train(part, gen, cfg.crop_scale, augment=cfg.augment)
                    z_t = ctx.teacher(x).float() if share > 0 else zero
                z_s = student(x).float() if share < 1 else zero
                votes.append(kd3.blended_vote(z_t, z_s, share))
                start = end
        student.train()
        empty = torch.empty(0, device=ctx.device)
        conf, labels = zip(*votes, strict=True) if votes else ((empty,), (empty.long(),))
        return ctx.ranks.gather(torch.cat(conf), n), ctx.ranks.gather(torch.cat(labels), n)

    # -- Components 2 and 3: the loss of a batch -------------------------------------------------
    def loss(self, x, idx, gen):
        """L_WFA (+ KD term) (+ gamma L_con with MixDistribution), as the released code computes
        them: the teacher and the alignment see the clean batch x only; the perturbed batch x~
        goes through the student's backbone, in its own train-mode pass, for the contrastive
        term alone."""
        cfg, teacher = self.cfg, self.ctx.teacher
        with torch.no_grad():
            h_t = teacher.forward_features(x)
            z_t = teacher.head(teacher.pool(h_t))
        terms = {}
        if self.shared:
            f_s = self.student.backbone.forward_features(x)
            h_s = self.student.projector(f_s)
            z_s = self.student.head(self.student.pool(h_s))
            terms["wfa"] = kd3.wfa_loss(h_s, h_t, kd3.instance_weights(z_s, z_t))
            if cfg.kd_weight > 0:
                terms["kd"] = cfg.kd_weight * baselines.kd_loss(z_s, z_t, cfg.kd_temperature)
        else:  # ablation without classifier sharing: the student's own classifier, Hinton KD
            f_s = self.student.forward_features(x)
            z_s = self.student.head(self.student.pool(f_s))
            terms["kd"] = baselines.kd_loss(z_s, z_t, cfg.kd_temperature)
        if cfg.mixing:
            f_mix = self.backbone.forward_features(kd3.mix_distribution(x, cfg.mix_alpha, gen))
            e = self.modules["contrast"](torch.cat([_pooled(f_s), _pooled(f_mix)]))
            b = x.shape[0]
            terms["contrast"] = cfg.gamma * kd3.nt_xent(e[:b], e[b:], cfg.nt_temperature)
        return terms


class KD3Paper(KD3):
    name = "kd3-paper"
    summary = "KD3 as the paper's released code: RandomResizedCrop(0.08-1), WFA only, FlexMatch"
    recipe = {
        "augment": "rrc",
        "crop_scale": (0.08, 1.0),
        "selection_rule": "paper",
        "kd_weight": 0.0,
        "share_floor": 0.0,
        "epoch_size": "selection",
        "mixing": True,
    }


def _pooled(fmap: torch.Tensor) -> torch.Tensor:
    return torch.flatten(F.adaptive_avg_pool2d(fmap, 1), 1).float()
