"""KD3 and baseline formulas against hand-computed values and brute-force references."""

import math

import numpy as np
import pytest
import scipy.stats
import torch

from distill import baselines, kd3
from distill.models import create_model

torch.set_num_threads(1)


# -- teacher_share -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("epoch", "epochs", "expected"),
    [
        (0, 240, 1 - math.exp(-5 * (1 / 160 - 1) ** 2)),  # 0.99283
        (59, 240, 1 - math.exp(-5 * 0.390625)),  # (60/160 - 1)^2 = 0.390625 -> 0.8582
        (99, 240, 1 - math.exp(-5 * 0.140625)),  # 0.4950
        (119, 240, 1 - math.exp(-0.3125)),  # 0.2684
        (120, 240, 0.0),
        (239, 240, 0.0),
        (9, 20, 1 - math.exp(-0.3125)),  # same point of the ramp at E = 20
        (10, 20, 0.0),
    ],
)
def test_teacher_share_hand_values(epoch, epochs, expected):
    assert kd3.teacher_share(epoch, epochs) == pytest.approx(expected, abs=1e-12)


def test_teacher_share_matches_the_method_page():
    assert kd3.teacher_share(0, 240) == pytest.approx(0.99, abs=0.005)
    # the page's "0.85 at 60, 0.49 at 100, 0.27 at 119" use the 0-based epoch index e
    assert kd3.teacher_share(60, 240) == pytest.approx(0.85, abs=0.005)
    assert kd3.teacher_share(100, 240) == pytest.approx(0.49, abs=0.005)
    assert kd3.teacher_share(119, 240) == pytest.approx(0.27, abs=0.005)


# -- class_thresholds ----------------------------------------------------------------------------
def test_class_thresholds_hand_values():
    t = kd3.class_thresholds(torch.tensor([10, 5, 0, 10]))
    # b = [1, 0.5, 0, 1]; tau_c = 0.95 b / (2 - b)
    assert t.tolist() == pytest.approx([0.95, 0.95 * 0.5 / 1.5, 0.0, 0.95])
    assert kd3.class_thresholds(torch.tensor([4, 1]), tau=0.5).tolist() == pytest.approx(
        [0.5, 0.5 * 0.25 / 1.75]
    )
    assert kd3.class_thresholds(torch.zeros(3)).tolist() == [0.0, 0.0, 0.0]


def test_select_instances_against_brute_force():
    g = torch.Generator().manual_seed(0)
    z_t, z_s = torch.randn(200, 5, generator=g) * 3, torch.randn(200, 5, generator=g) * 3
    share = 0.7
    sel = kd3.select_instances(z_t, z_s, share)
    probs = [torch.softmax(share * z_t[i] + (1 - share) * z_s[i], 0) for i in range(200)]
    labels = [int(p.argmax()) for p in probs]
    counts = [labels.count(c) for c in range(5)]
    top = max(counts)
    taus = [0.95 * (n / top) / (2 - n / top) for n in counts]
    mask = [float(p.max()) > taus[y] for p, y in zip(probs, labels, strict=True)]
    assert sel.pseudo_labels.tolist() == labels
    assert sel.counts.tolist() == counts
    assert sel.mask.tolist() == mask
    assert sel.selected_per_class.tolist() == [
        sum(m and y == c for m, y in zip(mask, labels, strict=True)) for c in range(5)
    ]
    assert 0 < sel.mask.sum() < 200


# -- instance weights and WFA --------------------------------------------------------------------
def test_instance_weights_hand_values():
    z_s = torch.tensor([[3.0, 4.0], [1.0, 1.0]], requires_grad=True)
    z_t = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    w = kd3.instance_weights(z_s, z_t)
    assert w.tolist() == pytest.approx([1 / (1 + math.exp(-5)), 0.5])
    assert not w.requires_grad


def test_wfa_loss_against_brute_force_with_spatial_pooling():
    g = torch.Generator().manual_seed(1)
    h_s = torch.randn(3, 4, 8, 8, generator=g)
    h_t = torch.randn(3, 4, 4, 4, generator=g)
    w = torch.tensor([0.5, 0.7, 0.9])
    # reference: average 2x2 blocks of the larger student map, then loops
    pooled = h_s.reshape(3, 4, 4, 2, 4, 2).mean(dim=(3, 5))
    total = 0.0
    for i in range(3):
        total += (
            w[i]
            * sum(
                float((pooled[i, c, y, x] - h_t[i, c, y, x]) ** 2)
                for c in range(4)
                for y in range(4)
                for x in range(4)
            )
            / (4 * 4 * 4)
        )
    assert float(kd3.wfa_loss(h_s, h_t, w)) == pytest.approx(float(total) / 3, rel=1e-5)
    # symmetric case: the teacher's map is the larger one
    assert float(kd3.wfa_loss(h_t, h_s, w)) == pytest.approx(float(total) / 3, rel=1e-5)


def test_projector_and_shared_head_student():
    teacher = create_model("resnet20", 4)
    student = kd3.SharedHeadStudent(create_model("resnet8", 4), teacher)
    assert torch.equal(student.head.weight, teacher.head.weight)
    assert not any(p.requires_grad for p in student.head.parameters())
    x = torch.randn(2, 3, 16, 16)
    h = student.forward_features(x)
    assert h.shape == teacher.forward_features(x).shape  # projected to the teacher's channels
    student.train()
    assert not student.head.training and student.projector.training
    kinds = [type(m).__name__ for m in student.projector.net]
    assert kinds == ["Conv2d", "BatchNorm2d", "ReLU"] * 3
    assert [m.kernel_size for m in student.projector.net if hasattr(m, "kernel_size")] == [
        (1, 1),
        (3, 3),
        (1, 1),
    ]


# -- MixDistribution -----------------------------------------------------------------------------
def test_mix_distribution_against_brute_force():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5, 3, 6, 6, generator=g) * 2 + 1
    mixed, perm, lam = kd3.mix_distribution(x, 0.1, torch.Generator().manual_seed(3), True)
    assert sorted(perm.tolist()) == list(range(5))
    assert ((lam >= 0) & (lam <= 1)).all()
    x64 = x.double()
    for b in range(5):
        p = int(perm[b])
        for c in range(3):
            mu_b, mu_p = x64[b, c].mean(), x64[p, c].mean()
            sd_b = (x64[b, c].var() + 1e-6).sqrt()
            sd_p = (x64[p, c].var() + 1e-6).sqrt()
            lb = float(lam[b])
            want = (
                (lb * sd_b + (1 - lb) * sd_p) * (x64[b, c] - mu_b) / sd_b
                + lb * mu_b
                + (1 - lb) * mu_p
            )
            assert torch.allclose(mixed[b, c].double(), want, atol=1e-4)


def test_mix_distribution_is_reproducible_and_lambda_one_is_identity():
    x = torch.randn(4, 3, 5, 5)
    a = kd3.mix_distribution(x, generator=torch.Generator().manual_seed(9))
    b = kd3.mix_distribution(x, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a, b)
    same = kd3._mix_with(x, torch.tensor([1, 2, 3, 0]), torch.ones(4, 1, 1, 1))
    assert torch.allclose(same, x, atol=1e-4)


def test_sample_beta_matches_the_beta_distribution():
    samples = kd3.sample_beta(0.1, 20000, torch.Generator().manual_seed(0)).numpy()
    result = scipy.stats.kstest(samples, scipy.stats.beta(0.1, 0.1).cdf)
    assert result.pvalue > 1e-3
    assert samples.var() == pytest.approx(0.01 / (0.04 * 1.2), rel=0.05)  # ab/((a+b)^2(a+b+1))


# -- NT-Xent -------------------------------------------------------------------------------------
def test_nt_xent_hand_values():
    # one pair: the only other view is the positive, so every term is -log(1) = 0
    assert float(kd3.nt_xent(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]))) == 0.0
    # two identical pairs of orthogonal unit vectors: each view has similarity 1 to its
    # positive and 0 to the two negatives -> log(1 + 2 exp(-1/t))
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    expected = math.log(1 + 2 * math.exp(-1 / 0.3))
    assert float(kd3.nt_xent(a, a.clone() * 3)) == pytest.approx(expected, rel=1e-6)


def test_nt_xent_against_brute_force():
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    t = 0.3
    views = [v / v.norm() for v in torch.cat([a, b]).double()]
    total = 0.0
    for k in range(12):
        pos = (k + 6) % 12
        denom = sum(math.exp(float(views[k] @ views[m]) / t) for m in range(12) if m != k)
        total += -math.log(math.exp(float(views[k] @ views[pos]) / t) / denom)
    assert float(kd3.nt_xent(a, b, t)) == pytest.approx(total / 12, rel=1e-5)


# -- baselines -----------------------------------------------------------------------------------
def test_kd_loss_against_brute_force():
    g = torch.Generator().manual_seed(5)
    z_s, z_t = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    ref = 0.0
    for i in range(4):
        p_t = torch.softmax(z_t[i].double() / 4, 0)
        p_s = torch.softmax(z_s[i].double() / 4, 0)
        ref += float((p_t * (p_t.log() - p_s.log())).sum())
    assert float(baselines.kd_loss(z_s, z_t)) == pytest.approx(ref / 4 * 16, rel=1e-5)
    assert float(baselines.kd_loss(z_t, z_t)) == pytest.approx(0.0, abs=1e-6)


def test_noise_adaptation_matrix_and_loss():
    na = baselines.NoiseAdaptation(3, 0.8)
    with torch.no_grad():
        na.theta.copy_(torch.tensor([[9.0, 0.0, math.log(3)], [0.0, 5.0, 0.0], [1.0, 1.0, 7.0]]))
    q = na.matrix()
    # row 0: off-diagonal softmax over [0, log 3] -> [1/4, 3/4], scaled by 0.2
    assert q[0].tolist() == pytest.approx([0.8, 0.05, 0.15])
    assert q[1].tolist() == pytest.approx([0.1, 0.8, 0.1])
    assert q.sum(1).tolist() == pytest.approx([1.0, 1.0, 1.0])
    z_s, z_t = torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([[0.0, 0.0, 5.0]])
    p = torch.softmax(z_s, 1)[0]
    expected = -math.log(float(p @ q.detach()[:, 2]))
    assert float(na.loss(z_s, z_t).detach()) == pytest.approx(expected, rel=1e-6)


def test_top_confident_and_random_subset():
    conf = torch.tensor([0.1, 0.9, 0.5, 0.95, 0.2])
    assert baselines.top_confident(conf, 2).tolist() == [1, 3]
    subset = baselines.random_subset(100, 30, torch.Generator().manual_seed(0))
    assert len(set(subset.tolist())) == 30 and np.all(np.diff(subset.numpy()) > 0)


def test_robust_selection_clamps_the_class_thresholds():
    """A class the blend rarely predicts keeps a floor (no near-zero threshold), and the class
    predicted most keeps a cap (it is not shut out by tau = 0.95)."""
    z = torch.zeros(100, 3)
    z[:90, 0] = 3.0  # class 0 predicted 90 times, p ~ 0.91
    z[90:99, 1] = 0.5  # class 1: 9 times, p ~ 0.45
    z[99, 2] = 4.0  # class 2 once, p ~ 0.96
    paper = kd3.select_instances(z, z, 1.0)
    robust = kd3.select_instances(z, z, 1.0, bounds=(0.5, 0.8))
    assert paper.thresholds[1] < 0.1 and paper.selected_per_class.tolist() == [0, 9, 1]
    assert robust.thresholds.tolist() == pytest.approx([0.8, 0.5, 0.5])
    assert robust.selected_per_class.tolist() == [90, 0, 1]
