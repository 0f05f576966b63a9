"""Distillation at scale: the in-memory and the streamed data paths side by side.

For each image size, one synthetic decoded pool (the materialised cache's .npy form) of
--pool-mib, 4x the --budget-mib memory budget by default, is trained on in two child processes:
  memory    the whole pool loaded into one uint8 tensor (what pools under the budget do);
  streamed  distill.streaming.DiskImages: rows read by preadv, prefetched by torchdata threads.
Each child runs the trainer's own step (Trainer.train_step: KD3's default recipe, batched
augmentation, teacher forward, student forward/backward) on --steps random batches drawn from
the whole pool, after --warmup steps, and the teacher's inference pass (the selection pass's
work) over --infer-images consecutive images; it reports images/s and its peak RSS (VmHWM).
Models: 32 px resnet20 -> resnet8; larger sizes torchvision resnet18 -> mobilenet_v3_small
(batch 256 at 32 px, 64 above).

The page cache holds the file (it was just written, and this machine's RAM is larger than
the pool): the streamed numbers are for a pool served from RAM or a fast SSD; --cold drops the
file's pages first (posix_fadvise DONTNEED) to read it from the disk.

It ends with a projection for 10^6 images at 224 px on one H100 from per-image costs: the
read cost measured here, JPEG decode + resize measured here on the web-like pool's JPEGs, and
the GPU's compute from FLOP counts at an effective rate taken from MLPerf's ResNet-50 results
(no GPU here: that part is an estimate, and says so).

    .venv/bin/python bench/distill_scale.py [--sizes 32,224] [--budget-mib 256] [--steps 30]

--end-to-end N instead runs `kd3 distill` itself (default KD3, one epoch, resnet20 -> resnet8 at
32 px) on a pool directory of N synthetic images, with no budget and with --budget-mib, and
reports wall time and the process's peak RSS (wait4): the whole run, teacher pass, selection,
training and evaluation, not only the training steps.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_pool(path: Path, count: int, size: int, seed: int = 0) -> None:
    """Smooth random images (so augmentation and models see image-like input), 2k at a time."""
    rng = np.random.default_rng(seed)
    header = {"descr": "|u1", "fortran_order": False, "shape": (count, size, size, 3)}
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        for start in range(0, count, 2048):
            n = min(2048, count - start)
            small = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
            reps = -(-size // 8)
            big = np.repeat(np.repeat(small, reps, axis=1), reps, axis=2)[:, :size, :size]
            fh.write(np.ascontiguousarray(big).tobytes())


def memory_mib(field: str = "VmHWM") -> float:
    """This process's peak (VmHWM) or current (VmRSS) resident memory."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(args) -> None:
    """One mode on one pool: print a JSON line of images/s and peak RSS."""
    import torch

    from distill.checkpoints import ModelMeta
    from distill.data import ImageSet
    from distill.evaluation import predict_logits
    from distill.models import create_model
    from distill.streaming import DiskImages
    from distill.trainer import TrainConfig, Trainer

    torch.set_num_threads(args.threads)
    base = memory_mib("VmRSS")  # the interpreter, torch and kd3's modules, before any pool
    path, size = Path(args.pool), args.size
    if args.cold:
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
    start = time.perf_counter()
    images = torch.from_numpy(np.load(path)) if args.mode == "memory" else DiskImages(path)
    load_seconds = time.perf_counter() - start
    n = len(images)
    small = size <= 64
    teacher_arch, student = ("resnet20", "resnet8") if small else ("resnet18", "mobilenet_v3_small")
    teacher = create_model(teacher_arch, 10)
    meta = ModelMeta(teacher_arch, 10, None, size, (0.5,) * 3, (0.25,) * 3)
    cfg = TrainConfig(student=student, batch_size=args.batch, epochs=1)
    data = ImageSet(images, torch.full((n,), -1), None, str(path))
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(cfg, data, out, teacher, meta, device="cpu", log=lambda m: None)
        gen = torch.Generator().manual_seed(0)
        total = args.warmup + args.steps
        batches = list(torch.randperm(n, generator=gen)[: total * args.batch].split(args.batch))
        stream = trainer.train_set.batches(batches)
        for step, (idx, batch) in enumerate(zip(batches, stream, strict=True)):
            if step == args.warmup:
                t0 = time.perf_counter()
            trainer.train_step(idx, batch, gen)
        train_rate = args.steps * args.batch / (time.perf_counter() - t0)
        # The read path alone: the same kind of random batches, nothing trained.
        t0 = time.perf_counter()
        read = 0
        for batch in trainer.train_set.batches(batches):
            read += len(batch)
        read_rate = read / (time.perf_counter() - t0)
        part = images[: args.infer_images] if args.mode == "memory" else _first(images, args)
        t0 = time.perf_counter()
        predict_logits(trainer.teacher, part, trainer.norm, trainer.infer_batch)
        infer_rate = len(part) / (time.perf_counter() - t0)
    print(
        json.dumps(
            {
                "mode": args.mode,
                "size": size,
                "images": n,
                "load_s": load_seconds,
                "train_img_s": train_rate,
                "read_img_s": read_rate,
                "infer_img_s": infer_rate,
                "peak_rss_mib": memory_mib(),
                "base_rss_mib": base,
                "models": f"{teacher_arch}->{student}",
            }
        )
    )


def _first(images, args):
    import torch

    return images.take(torch.arange(min(args.infer_images, len(images))))


def decode_rate(count: int = 400) -> float:
    """JPEG decode + resize to 224 px per second on one core (pool.materialize's work), on
    the web-like pool's JPEGs scaled to ImageNet's typical 500x375."""
    import io

    from PIL import Image

    from pool.images import decode_rgb, resize_center_crop

    data = np.load(ROOT.parent / "shared/data/cifar10_test_jpeg.npz", allow_pickle=False)
    jpeg, offsets = data["jpeg"], data["offsets"]
    blobs = []
    for i in range(min(count, 100)):
        raw = jpeg[offsets[i] : offsets[i + 1]].tobytes()
        image = Image.open(io.BytesIO(raw)).convert("RGB").resize((500, 375))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        blobs.append(buffer.getvalue())
    t0 = time.perf_counter()
    for i in range(count):
        np.asarray(resize_center_crop(decode_rgb(blobs[i % len(blobs)]), 224))
    return count / (time.perf_counter() - t0)


def projection(results: list[dict], decode_per_core: float, epochs: int = 20) -> str:
    """10^6 images at 224 px on one H100, from per-image costs (see the module docstring)."""
    n = 1_000_000
    gflop = {"resnet50": 4.1, "resnet18": 1.8}  # forward, per 224 px image
    # Per image per epoch: teacher forward in the loss, student forward + backward (3x), and the
    # selection pass's student forward; the teacher's clean logits once per run.
    per_epoch = gflop["resnet50"] + 3 * gflop["resnet18"] + gflop["resnet18"]
    # MLPerf Training v3.x ResNet-50 on 8x H100: ~13 min for ~37 epochs of 1.28M images,
    # ~7.6k images/s/GPU at 3 x 4.1 GFLOP each: ~93 TFLOP/s effective (DALI-fed, tuned).
    effective_tflops = 93
    compute_s = n * per_epoch / (effective_tflops * 1e3)
    streamed = [r for r in results if r["mode"] == "streamed"]
    big = max(streamed, key=lambda r: r["size"]) if streamed else None
    lines = ["", "## Projection: 10^6 images at 224 px, resnet50 -> resnet18, one H100", ""]
    lines.append(
        f"- cache: {n * 224 * 224 * 3 / 1e9:.0f} GB on disk; built once at {decode_per_core:.0f} "
        f"images/s per core (JPEG 500x375 decode + resize, measured here): "
        f"{n / decode_per_core / 60 / 32:.0f} min on 32 cores"
    )
    lines.append(
        f"- GPU compute per epoch: {per_epoch:.1f} GFLOP per image at ~{effective_tflops} "
        f"TFLOP/s effective (estimated from MLPerf, not measured): {compute_s / 60:.1f} min, "
        f"{n / compute_s:,.0f} images/s to feed"
    )
    if big:
        from distill.streaming import READ_THREADS

        scale = (224 / big["size"]) ** 2  # bytes per image; per-call costs do not scale so
        rate = big["read_img_s"] / scale
        host_threads = 16  # a GPU host's reader threads (READ_THREADS = cores, at most 16)
        host_rate = rate * host_threads / READ_THREADS
        how = "measured here" if big["size"] == 224 else f"scaled from {big['size']} px"
        need = n / compute_s
        lines.append(
            f"- reading (page cache): {rate:,.0f} images/s with {READ_THREADS} reader threads, "
            f"{how}; ~{host_rate:,.0f} with {host_threads} (scaled by threads): "
            + ("enough" if host_rate >= need else "NOT enough")
            + f" for {need:,.0f}; from disk it needs {need * 224 * 224 * 3 / 1e9:.1f} GB/s "
            "(NVMe-class), or RAM for the 151 GB cache"
        )
    lines.append(
        f"- teacher logits of the pool on the host: {n * 1000 * 4 / 1e9:.0f} GB for 1000 classes"
    )
    logits_s = n * gflop["resnet50"] / (effective_tflops * 1e3)
    lines.append(
        f"- a {epochs}-epoch run: {(epochs * compute_s + logits_s) / 3600:.1f} h of GPU time "
        f"({epochs} x {compute_s / 60:.1f} min + {logits_s / 60:.1f} min for the teacher's "
        "clean logits), once the cache is built; the cache build's own disk traffic (reading "
        "~110 GB of JPEGs, writing 151 GB) is not in it"
    )
    return "\n".join(lines)


def end_to_end(count: int, budget_mib: int, work: Path) -> None:
    import torch

    from distill.checkpoints import ModelMeta, save_model
    from distill.models import create_model
    from pool.importer import import_into_pool

    pool = work / f"pool-{count}"
    if not pool.exists():
        x = np.empty((count, 32, 32, 3), np.uint8)
        for start in range(0, count, 4096):
            write_pool(work / "part.npy", min(4096, count - start), 32, seed=start)
            x[start : start + 4096] = np.load(work / "part.npy")
        names = np.array([f"class{i}" for i in range(10)])
        y = np.random.default_rng(0).integers(0, 10, count)
        np.savez(work / "synthetic.npz", x=x, y=y, class_names=names)
        del x
        report = import_into_pool(work / "synthetic.npz", pool)
        assert report.added == count, f"{report.added} of {count} images added"
    teacher = work / "teacher.pt"
    torch.manual_seed(0)
    names = [f"class{i}" for i in range(10)]
    meta = ModelMeta("resnet20", 10, names, 32, (0.5,) * 3, (0.25,) * 3)
    save_model(teacher, create_model("resnet20", 10), meta)
    decoded = count * 32 * 32 * 3 / 2**20
    print(f"# kd3 distill end to end: {count:,} images at 32 px ({decoded:.0f} MiB decoded), "
          f"1 epoch, default KD3, resnet20 -> resnet8, 2 threads\n")  # fmt: skip
    print("| memory budget | wall s | train img/s | peak RSS MiB |\n|---|---|---|---|")
    for budget in (None, budget_mib):
        out = work / f"run-{budget}"
        cmd = [str(ROOT / ".venv/bin/kd3"), "distill", "--teacher", str(teacher), "--pool"]
        cmd += [str(pool), "--epochs", "1", "--device", "cpu", "--out", str(out)]
        cmd += ["--memory-budget", f"{budget}MiB"] if budget else []
        start = time.perf_counter()
        env = {**os.environ, "OMP_NUM_THREADS": "2"}
        process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        _pid, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        if status != 0:
            sys.exit(process.stderr.read().decode()[-3000:])
        metrics = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
        label = f"{budget} MiB (streamed)" if budget else "none (in memory)"
        print(f"| {label} | {wall:.0f} | {metrics['images_per_second']:.0f} "
              f"| {usage.ru_maxrss / 1024:,.0f} |", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="32,224")
    parser.add_argument("--budget-mib", type=int, default=256)
    parser.add_argument("--pool-mib", type=int, default=None, help="default: 4x the budget")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--infer-images", type=int, default=2048)
    parser.add_argument("--cold", action="store_true")
    parser.add_argument("--work-dir", default=None, help="where the pools are written")
    parser.add_argument("--end-to-end", type=int, default=0, metavar="N")
    # child mode
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--pool", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        return child(args)
    pool_mib = args.pool_mib or 4 * args.budget_mib
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="kd3-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.end_to_end:
        return end_to_end(args.end_to_end, args.budget_mib, work)
    print(f"# distill data path, pool {pool_mib} MiB = {pool_mib / args.budget_mib:.1f}x "
          f"the {args.budget_mib} MiB budget; {args.threads} torch threads", flush=True)  # fmt: skip
    print(
        "\n| px | images | mode | train img/s | ratio | read-only img/s | teacher infer img/s "
        "| peak RSS MiB | of it after imports | load s |\n|---|---|---|---|---|---|---|---|---|---|",
        flush=True,
    )
    results = []
    for size in (int(s) for s in args.sizes.split(",")):
        count = pool_mib * 2**20 // (size * size * 3)
        path = work / f"pool-{size}.npy"
        if not path.exists():
            write_pool(path, count, size)
        batch = 256 if size <= 64 else 64
        small_path = work / f"pool-{size}-1x.npy"  # budget-sized: streamed RSS must not grow
        if not small_path.exists():
            write_pool(small_path, args.budget_mib * 2**20 // (size * size * 3), size)
        rows = {}
        for mode, pool_path in (
            ("memory", path),
            ("streamed", path),
            ("streamed, 1x pool", small_path),
        ):
            cmd = [sys.executable, __file__, "--mode", mode.split(",")[0], "--pool", str(pool_path)]
            cmd += ["--size"]
            cmd += [str(size), "--batch", str(batch), "--steps", str(args.steps)]
            cmd += ["--warmup", str(args.warmup), "--threads", str(args.threads)]
            cmd += ["--infer-images", str(args.infer_images)] + (["--cold"] if args.cold else [])
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                sys.exit(f"{mode} {size}px failed:\n{out.stderr[-3000:]}")
            rows[mode] = json.loads(out.stdout.strip().splitlines()[-1])
            rows[mode]["mode"] = mode
            results.append(rows[mode])
        for mode, r in rows.items():
            ratio = r["train_img_s"] / rows["memory"]["train_img_s"]
            print(
                f"| {size} | {r['images']:,} | {mode} | {r['train_img_s']:.0f} | {ratio:.2f} "
                f"| {r['read_img_s']:,.0f} | {r['infer_img_s']:.0f} | {r['peak_rss_mib']:,.0f} "
                f"| {r['peak_rss_mib'] - r['base_rss_mib']:,.0f} | {r['load_s']:.1f} |",
                flush=True,
            )
    print(f"\nmodels: {', '.join(sorted({r['models'] for r in results}))}")
    print(projection(results, decode_rate()))


if __name__ == "__main__":
    main()
