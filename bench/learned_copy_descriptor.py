"""A probe for issue 14: can a small copy descriptor, trained SSCD-style on CPU, decide copies?

Trains a small CNN (GeM pooling, 128-d, InfoNCE at temperature 0.05 plus a KoLeo spread term,
as SSCD) on CIFAR-10 *train* images against their web_edits.py copies (one family or two),
with half of the web pool as extra negatives. Then, on CIFAR-10 *test* items it never saw,
plants copies of every family alone and in every pair, and reports:
- top-1: the share of copies whose most similar test item is their own (a candidate source);
- recall per family at the similarity threshold that flags 0.05% / 0.1% / 0.2% of the other
  (held-out) half of the web pool, for three scores: the raw similarity, the similarity minus
  the mean of the copy's 3 nearest web images (SSCD's score normalisation), and the gap to the
  second most similar item.

    nice .venv/bin/python bench/learned_copy_descriptor.py [--steps 1200] [--width 16]

About 15 minutes of training on 2 cores at the defaults. Not part of the service: dedup does not
use this descriptor (see the issue 14 note for why).
"""

from __future__ import annotations

import argparse
import io
import itertools
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import web_edits  # noqa: E402
from dedup_quality import data_dir  # noqa: E402

SIDE = 64  # every image is squashed to SIDE x SIDE
BATCH = 256
NEGATIVES = 128  # web images per step, as extra keys
TEMPERATURE = 0.05
KOLEO = 0.1


def decode_jpegs(path: Path) -> np.ndarray:
    d = np.load(path)
    blob, off = d["jpeg"], d["offsets"]
    return np.stack(
        [
            np.asarray(Image.open(io.BytesIO(blob[off[i] : off[i + 1]].tobytes())).convert("RGB"))
            for i in range(len(off) - 1)
        ]
    )


def to_tensor(images) -> torch.Tensor:
    a = np.stack(
        [np.asarray(im.convert("RGB").resize((SIDE, SIDE), Image.BILINEAR)) for im in images]
    )
    return torch.from_numpy(a).permute(0, 3, 1, 2).float().div(255)


def edited(arr: np.ndarray, rng) -> Image.Image:
    k = 1 if rng.random() < 0.35 else 2
    names = list(rng.choice(list(web_edits.FAMILIES), k, replace=False))
    return web_edits.apply(names, Image.fromarray(arr), rng)


def _block(i: int, o: int, stride: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(i, o, 3, stride, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True)
    )


class CopyNet(nn.Module):
    def __init__(self, width: int = 16, dim: int = 128):
        super().__init__()
        w = width
        self.body = nn.Sequential(
            _block(3, w, 2), _block(w, w, 1), _block(w, 2 * w, 2), _block(2 * w, 2 * w, 1),
            _block(2 * w, 4 * w, 2), _block(4 * w, 4 * w, 1), _block(4 * w, 8 * w, 2),
            _block(8 * w, 8 * w, 1),
        )  # fmt: skip
        self.head = nn.Linear(8 * w, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body((x - 0.45) / 0.25).clamp(min=1e-6).pow(3).mean((2, 3)).pow(1 / 3)  # GeM
        return F.normalize(self.head(h), dim=1)


def train(net: CopyNet, originals: np.ndarray, web: np.ndarray, steps: int, rng) -> None:
    opt = torch.optim.AdamW(net.parameters(), 2e-3, weight_decay=1e-4)
    start = time.time()
    for step in range(steps):
        warm = min(1.0, step / 50)
        lr = 2e-3 * warm * 0.5 * (1 + math.cos(math.pi * step / steps))
        for g in opt.param_groups:
            g["lr"] = lr
        idx = rng.choice(len(originals), BATCH, replace=False)
        keys = [Image.fromarray(originals[i]) for i in idx]
        keys += [Image.fromarray(web[i]) for i in rng.choice(len(web), NEGATIVES, replace=False)]
        copies = [edited(originals[i], rng) for i in idx]
        z = net(torch.cat([to_tensor(keys), to_tensor(copies)]))
        zk, zc = z[: len(keys)], z[len(keys) :]
        logits = zc @ zk.T / TEMPERATURE
        loss = F.cross_entropy(logits, torch.arange(BATCH))
        nearest = (torch.cdist(zc, zc) + torch.eye(BATCH) * 10).min(1).values
        koleo = -torch.log(nearest + 1e-6).mean()
        opt.zero_grad()
        (loss + KOLEO * koleo).backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            acc = (logits.argmax(1) == torch.arange(BATCH)).float().mean().item()
            print(f"step {step:5d}  loss {loss.item():.3f}  in-batch top-1 {acc:.3f}  "
                  f"{time.time() - start:.0f} s", flush=True)  # fmt: skip


@torch.inference_mode()
def embed(net: CopyNet, images) -> torch.Tensor:
    return torch.cat([net(to_tensor(images[i : i + 512])) for i in range(0, len(images), 512)])


def scores(z, items, background) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    sim = z @ items.T
    top2 = sim.topk(2, dim=1)
    best, arg = top2.values[:, 0], top2.indices[:, 0]
    near_web = (z @ background.T).topk(3, dim=1).values.mean(1)
    return {
        "raw": (best, arg),
        "minus web": (best - near_web, arg),
        "gap": (best - top2.values[:, 1], arg),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data")
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--alone", type=int, default=40, help="copies per family alone")
    ap.add_argument("--paired", type=int, default=6, help="copies per pair of families")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    data = data_dir(args.data)
    originals = decode_jpegs(data / "cifar10_train_jpeg.npz")
    test = np.load(data / "cifar10_test.npz")["x"]
    web = np.load(data / "webpool_tinyimagenet32.npz")["x"]
    net = CopyNet(args.width)
    print(f"CopyNet width {args.width}: {sum(p.numel() for p in net.parameters())} parameters")
    train(net, originals, web[0::2], args.steps, rng)
    net.eval()

    items = embed(net, [Image.fromarray(a) for a in test])
    background = embed(net, [Image.fromarray(a) for a in web[0::2]])
    untouched = embed(net, [Image.fromarray(a) for a in web[1::2]])
    groups = [((f,), args.alone) for f in web_edits.FAMILIES]
    groups += [(p, args.paired) for p in itertools.combinations(web_edits.FAMILIES, 2)]
    copies, source, names = [], [], []
    for fams, n in groups:
        for i in rng.choice(len(test), n, replace=False):
            copies.append(web_edits.apply(list(fams), Image.fromarray(test[i]), rng))
            source.append(int(i))
            names.append(fams)
    source = torch.tensor(source)
    z = embed(net, copies)
    copy_scores, fp_scores = scores(z, items, background), scores(untouched, items, background)
    top1 = (copy_scores["raw"][1] == source).float().mean().item()
    print(
        f"\n{len(copies)} copies of unseen CIFAR-10 test items; top-1 among 10,000 items {top1:.3f}"
    )
    families = list(web_edits.FAMILIES)
    print("recall alone / in pairs at the threshold giving FP on held-out untouched web images")
    print(f"{'score':10s} {'FP':>6s} {'thresh':>7s} " + " ".join(f"{f[:9]:>9s}" for f in families))
    for name in copy_scores:
        best, arg = copy_scores[name]
        for fp in (0.0005, 0.001, 0.002):
            threshold = torch.quantile(fp_scores[name][0], 1 - fp).item()
            hit = ((arg == source) & (best >= threshold)).tolist()
            cells = []
            for f in families:
                alone = [h for h, g in zip(hit, names, strict=True) if g == (f,)]
                paired = [h for h, g in zip(hit, names, strict=True) if len(g) == 2 and f in g]
                cells.append(f"{np.mean(alone):.2f}/{np.mean(paired):.2f}")
            print(f"{name:10s} {fp:6.4f} {threshold:7.3f} " + " ".join(f"{c:>9s}" for c in cells))


if __name__ == "__main__":
    main()
