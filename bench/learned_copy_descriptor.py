"""Train the learned copy descriptor of dedup/copy_net.py, and measure it alone.

SSCD recipe, small: the CNN of dedup/copy_net.py (GeM pooling, 128-d), InfoNCE at temperature
0.05 plus a KoLeo spread term, on CIFAR-10 *train* images against their web_edits.py copies (one
family or two), with the even (tuning) half of the web pool as extra negatives. Edits are made
by DataLoader worker processes; the network trains on the GPU when there is one.

Then, on CIFAR-10 *test* items it never saw, it plants copies of every family alone and in
every pair, and reports:
- top-1 / top-2: the share of copies whose own item is the most similar (or among the two most
  similar) of the 10,000 test items, per family alone and in pairs (a candidate source);
- recall per family at the similarity that flags 0.05% / 0.1% / 0.2% of the odd (held-out) half
  of the web pool (the descriptor as a decision).

    nice .venv/bin/python bench/learned_copy_descriptor.py --save dedup/weights/copy_net.pt

The shipped weights came from a GPU run (`--steps 6000 --batch 512 --workers 14`, about 5
minutes on one H200 with 16 cores editing images); on 2 CPU cores the default 1200 steps take
about 40 minutes.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import web_edits  # noqa: E402

from dedup import copy_net  # noqa: E402

TEMPERATURE = 0.05
KOLEO = 0.1
LR = 2e-3


def data_dir(flag: str | None) -> Path:
    import os

    return Path(flag or os.environ.get("KD3_DATA") or Path(__file__).parents[1] / "../shared/data")


def decode_jpegs(path: Path, limit: int | None = None) -> np.ndarray:
    d = np.load(path)
    blob, off = d["jpeg"], d["offsets"]
    n = len(off) - 1 if limit is None else min(limit, len(off) - 1)
    return np.stack(
        [
            np.asarray(Image.open(io.BytesIO(blob[off[i] : off[i + 1]].tobytes())).convert("RGB"))
            for i in range(n)
        ]
    )


def tuning_web(data: Path) -> np.ndarray:
    """The even (tuning) half of the web pool: from its plain file, or from a compact JPEG copy
    of that half (webpool_even_jpeg.npz) made to carry to a GPU machine."""
    if (data / "webpool_tinyimagenet32.npz").exists():
        return np.load(data / "webpool_tinyimagenet32.npz")["x"][0::2]
    return decode_jpegs(data / "webpool_even_jpeg.npz")


def edited(arr: np.ndarray, rng) -> Image.Image:
    k = 1 if rng.random() < 0.35 else 2
    names = list(rng.choice(list(web_edits.FAMILIES), k, replace=False))
    return web_edits.apply(names, Image.fromarray(arr), rng)


def squash_all(images) -> np.ndarray:
    return np.stack([copy_net.squash(im) for im in images])


class EditedBatches(torch.utils.data.IterableDataset):
    """Endless batches: (keys, copies) uint8 arrays; keys are `batch` originals then `negatives`
    web images, copies are one edited copy of each original."""

    def __init__(self, originals, web, batch: int, negatives: int, seed: int):
        self.originals, self.web = originals, web
        self.batch, self.negatives, self.seed = batch, negatives, seed

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([self.seed, info.id if info else 0])
        while True:
            idx = rng.choice(len(self.originals), self.batch, replace=False)
            neg = rng.choice(len(self.web), self.negatives, replace=False)
            keys = [Image.fromarray(self.originals[i]) for i in idx]
            keys += [Image.fromarray(self.web[i]) for i in neg]
            copies = [edited(self.originals[i], rng) for i in idx]
            yield torch.from_numpy(squash_all(keys)), torch.from_numpy(squash_all(copies))


def train(net, originals, web, args, device) -> None:
    data = EditedBatches(originals, web, args.batch, args.batch // 2, args.seed)
    loader = torch.utils.data.DataLoader(
        data, batch_size=None, num_workers=args.workers, pin_memory=device.type == "cuda"
    )
    opt = torch.optim.AdamW(net.parameters(), LR, weight_decay=1e-4)
    start = time.time()
    budget = args.minutes * 60 if args.minutes else math.inf
    labels = torch.arange(args.batch, device=device)
    for step, (keys, copies) in enumerate(loader):
        done = max(step / args.steps, (time.time() - start) / budget)
        if done >= 1:
            break
        lr = LR * min(1.0, step / 50) * 0.5 * (1 + math.cos(math.pi * done))
        for g in opt.param_groups:
            g["lr"] = lr
        with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
            z = net(torch.cat([keys, copies]).to(device, non_blocking=True))
        zk, zc = z[: len(keys)], z[len(keys) :]
        logits = zc @ zk.T / TEMPERATURE
        loss = F.cross_entropy(logits, labels)
        eye = torch.eye(args.batch, device=device) * 10
        koleo = -torch.log((torch.cdist(zc, zc) + eye).min(1).values + 1e-6).mean()
        opt.zero_grad()
        (loss + KOLEO * koleo).backward()
        opt.step()
        if step % 100 == 0:
            acc = (logits.argmax(1) == labels).float().mean().item()
            print(f"step {step:5d}  loss {loss.item():.3f}  in-batch top-1 {acc:.3f}  "
                  f"{time.time() - start:.0f} s", flush=True)  # fmt: skip
    print(f"trained {step} steps of {args.batch} pairs in {time.time() - start:.0f} s")


@torch.inference_mode()
def embed(net, squashed: np.ndarray, device) -> torch.Tensor:
    return torch.cat(
        [
            net(torch.from_numpy(squashed[i : i + 1024]).to(device))
            for i in range(0, len(squashed), 1024)
        ]
    )


def save(net, path: Path, args) -> None:
    state = {k: v.half() if v.is_floating_point() else v for k, v in net.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"width": args.width, "dim": 128, "side": copy_net.SIDE, "state": state,
         "trained": f"bench/learned_copy_descriptor.py --steps {args.steps} --batch {args.batch}"
                    f" --seed {args.seed} --minutes {args.minutes}"},
        path,
    )  # fmt: skip
    print(f"saved {path} ({path.stat().st_size:,} bytes)")


def evaluate(net, data: Path, args, device) -> None:
    rng = np.random.default_rng(args.seed + 1)
    web = np.load(data / "webpool_tinyimagenet32.npz")["x"]
    test = np.load(data / "cifar10_test.npz")["x"]
    items = embed(net, squash_all(Image.fromarray(a) for a in test), device)
    untouched = embed(net, squash_all(Image.fromarray(a) for a in web[1::2]), device)
    groups = [((f,), args.alone) for f in web_edits.FAMILIES]
    groups += [(p, args.paired) for p in itertools.combinations(web_edits.FAMILIES, 2)]
    copies, source, names = [], [], []
    for fams, n in groups:
        for i in rng.choice(len(test), n, replace=False):
            copies.append(web_edits.apply(list(fams), Image.fromarray(test[i]), rng))
            source.append(int(i))
            names.append(fams)
    source = torch.tensor(source, device=device)
    sim = embed(net, squash_all(copies), device) @ items.T
    top = sim.topk(2, dim=1)
    best, arg = top.values[:, 0], top.indices[:, 0]
    in_top2 = (top.indices == source[:, None]).any(1)
    fp_best = (untouched @ items.T).amax(1)
    families = list(web_edits.FAMILIES)

    def cells(hit) -> list[str]:
        hit = hit.tolist()
        out = []
        for f in families:
            alone = [h for h, g in zip(hit, names, strict=True) if g == (f,)]
            paired = [h for h, g in zip(hit, names, strict=True) if len(g) == 2 and f in g]
            out.append(f"{np.mean(alone):.2f}/{np.mean(paired):.2f}")
        return out

    print(f"\n{len(copies)} copies of unseen CIFAR-10 test items, alone / in pairs")
    print(f"{'':22s} " + " ".join(f"{f[:9]:>9s}" for f in families))
    print(f"{'top-1 of 10,000 items':22s} " + " ".join(f"{c:>9s}" for c in cells(arg == source)))
    print(f"{'top-2':22s} " + " ".join(f"{c:>9s}" for c in cells(in_top2)))
    for fp in (0.0005, 0.001, 0.002):
        threshold = torch.quantile(fp_best, 1 - fp).item()
        hit = (arg == source) & (best >= threshold)
        label = f"FP {fp:.4f} (>= {threshold:.3f})"
        print(f"{label:22s} " + " ".join(f"{c:>9s}" for c in cells(hit)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data")
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--minutes", type=float, help="stop training after this long")
    ap.add_argument("--batch", type=int, default=256, help="originals per step")
    ap.add_argument("--workers", type=int, default=1, help="processes making edited copies")
    ap.add_argument("--train-limit", type=int, help="only the first N CIFAR-10 train images")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--save", type=Path, help="write the trained weights here")
    ap.add_argument("--load", type=Path, help="evaluate these weights instead of training")
    ap.add_argument("--skip-eval", action="store_true")
    ap.add_argument("--alone", type=int, default=40, help="copies per family alone")
    ap.add_argument("--paired", type=int, default=6, help="copies per pair of families")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(2)
    torch.manual_seed(args.seed)
    data = data_dir(args.data)
    if args.load:
        saved = torch.load(args.load, map_location="cpu", weights_only=True)
        net = copy_net.build(saved["width"], saved["dim"])
        net.load_state_dict({k: v.float() for k, v in saved["state"].items()})
        net = net.to(device)
    else:
        originals = decode_jpegs(data / "cifar10_train_jpeg.npz", args.train_limit)
        net = copy_net.build(args.width).to(device).to(memory_format=torch.channels_last)
        print(f"CopyNet width {args.width}: {sum(p.numel() for p in net.parameters())} "
              f"parameters, {len(originals)} originals, {device}")  # fmt: skip
        train(net, originals, tuning_web(data), args, device)
        if args.save:
            save(net, args.save, args)
    net.eval()
    if not args.skip_eval:
        evaluate(net, data, args, device)


if __name__ == "__main__":
    main()
