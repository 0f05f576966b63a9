"""Datasets kept decoded as uint8 tensors, and batched augmentation on tensors.

A pool directory is materialised once (pool.materialize) and an .npz is read once; the images
then live as one uint8 (N, H, W, 3) tensor, on the GPU when there is one. Augmentation
(RandomResizedCrop + flip + normalise) is one affine grid_sample call per batch: there is no
per-image Python in the training loop.
"""

from __future__ import annotations

import io
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from distill.errors import DistillError


@dataclass
class ImageSet:
    images: torch.Tensor  # (N, H, W, 3) uint8
    labels: torch.Tensor  # (N,) int64, -1 where unknown
    class_names: list[str] | None
    source: str

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device) -> ImageSet:
        return ImageSet(
            self.images.to(device), self.labels.to(device), self.class_names, self.source
        )

    @property
    def has_labels(self) -> bool:
        return bool((self.labels >= 0).any())


def load_images(path: str | Path, size: int | None = 32, progress: bool = False) -> ImageSet:
    """Load a pool directory (kept images) or an .npz (`x` or JPEG `jpeg`/`offsets`, optional `y`
    and `class_names`) as uint8 images of `size` x `size` (npz images are resized if needed;
    size None keeps an npz's own size, and means 32 for a pool)."""
    path = Path(path)
    if path.is_dir():
        return _load_pool(path, size or 32, progress)
    if not path.exists():
        raise DistillError(f"{path}: no such pool directory or .npz file")
    return _load_npz(path, size)


def _load_pool(path: Path, size: int, progress: bool) -> ImageSet:
    from pool.errors import PoolError
    from pool.materialize import materialize
    from pool.store import Pool

    try:
        pool = Pool.open(path)
        mat = materialize(pool, size, progress=progress)
        classes = pool.classes()
    except PoolError as exc:
        raise DistillError(str(exc)) from None
    if len(mat.sha256) == 0:
        raise DistillError(f"{path}: the pool has no kept images")
    return ImageSet(
        images=torch.from_numpy(np.array(mat.images)),  # copy out of the memory map
        labels=torch.from_numpy(mat.class_index.astype(np.int64)),
        class_names=classes.names if classes else None,
        source=str(path),
    )


def _load_npz(path: Path, size: int | None) -> ImageSet:
    try:
        archive = np.load(path, allow_pickle=False)
        keys = set(archive.files)
        if "x" in keys:
            x = archive["x"]
        elif {"jpeg", "offsets"} <= keys:
            x = _decode_jpegs(archive["jpeg"], archive["offsets"])
        else:
            raise DistillError(f"{path}: no 'x' (uint8 N,H,W,3) or 'jpeg'/'offsets' arrays")
        y = archive["y"].astype(np.int64) if "y" in keys else np.full(len(x), -1, np.int64)
        names = [str(n) for n in archive["class_names"]] if "class_names" in keys else None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DistillError(f"{path}: not a readable .npz ({type(exc).__name__})") from None
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise DistillError(f"{path}: 'x' must be uint8 (N,H,W,3), got {x.dtype} {x.shape}")
    if len(y) != len(x):
        raise DistillError(f"{path}: 'y' has {len(y)} labels for {len(x)} images")
    images = torch.from_numpy(np.ascontiguousarray(x))
    if size is not None and images.shape[1:3] != (size, size):
        images = resize_uint8(images, size)
    return ImageSet(images, torch.from_numpy(y), names, str(path))


def _decode_jpegs(blob: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    from PIL import Image

    return np.stack(
        [
            np.asarray(Image.open(io.BytesIO(blob[a:b].tobytes())).convert("RGB"))
            for a, b in zip(offsets[:-1], offsets[1:], strict=True)
        ]
    )


def resize_uint8(images: torch.Tensor, size: int, chunk: int = 1024) -> torch.Tensor:
    """Resize uint8 NHWC images to size x size (antialiased bilinear), in chunks."""
    out = []
    for part in images.split(chunk):
        f = part.permute(0, 3, 1, 2).float()
        f = F.interpolate(f, size=(size, size), mode="bilinear", antialias=True)
        out.append(f.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1))
    return torch.cat(out).contiguous()


class Normalizer:
    """uint8 NHWC batch -> normalised float NCHW, optionally resized to the model's input."""

    def __init__(self, mean, std, size: int, device, channels_last: bool = False):
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1) * 255
        self.size = size
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def _to_float(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.to(self.mean.device, non_blocking=True).permute(0, 3, 1, 2).float()
        return x

    def eval(self, batch: torch.Tensor) -> torch.Tensor:
        x = self._to_float(batch)
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True)
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=self.memory_format)

    def train(
        self,
        batch: torch.Tensor,
        generator: torch.Generator,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        augment: str = "rrc",
    ) -> torch.Tensor:
        """A training view of every image, batched: augment "rrc" is RandomResizedCrop(size,
        scale, ratio) + horizontal flip; "padcrop" is the CIFAR recipe, a random crop of the
        image zero-padded by size/8 pixels (4 at 32 px) + horizontal flip. Then normalise."""
        if augment == "padcrop":
            return self._pad_crop(batch, generator)
        x = self._to_float(batch)
        theta = random_resized_crop_theta(
            x.shape[0], x.shape[-1], x.shape[-2], scale, ratio, generator
        ).to(x.device)
        grid = F.affine_grid(theta, [x.shape[0], 3, self.size, self.size], align_corners=False)
        x = F.grid_sample(
            (x - self.mean) / self.std,
            grid,
            mode="bilinear",
            padding_mode="border",
            align_corners=False,
        )
        return x.contiguous(memory_format=self.memory_format)

    def _pad_crop(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        x = self._to_float(batch)
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True)
        theta = pad_crop_theta(x.shape[0], self.size, max(1, self.size // 8), generator)
        grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
        # Integer shifts sample exact pixels; outside the image is black, as torchvision's pad.
        x = F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=self.memory_format)


def pad_crop_theta(n: int, size: int, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Affine matrices (n, 2, 3): a shift by a whole number of pixels in [-pad, pad] on each
    axis (RandomCrop(size, padding=pad)) and a random horizontal flip."""
    shift = torch.randint(-pad, pad + 1, (n, 2), generator=generator).double()
    flip = torch.rand(n, generator=generator, dtype=torch.float64) < 0.5
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = torch.where(flip, -1.0, 1.0)
    theta[:, 1, 1] = 1.0
    theta[:, :, 2] = 2 * shift / size
    return theta.float()


def random_resized_crop_theta(
    n: int,
    width: int,
    height: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
    tries: int = 10,
) -> torch.Tensor:
    """Affine matrices (n, 2, 3) for torchvision's RandomResizedCrop box sampling plus a random
    horizontal flip: `tries` candidate boxes per image, the first that fits wins, else the
    central crop clipped to `ratio` (torchvision's fallback)."""
    area = width * height
    u = torch.rand(n, tries, 4, generator=generator, dtype=torch.float64)
    target = area * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[..., 1]
    aspect = torch.exp(log_r)
    w = torch.sqrt(target * aspect).round()
    h = torch.sqrt(target / aspect).round()
    fits = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    first = torch.where(fits.any(1), fits.float().argmax(1), torch.full((n,), -1))
    rows = torch.arange(n)
    pick = first.clamp_min(0)
    w, h = w[rows, pick], h[rows, pick]
    x0 = torch.floor(u[rows, pick, 2] * (width - w + 1))
    y0 = torch.floor(u[rows, pick, 3] * (height - h + 1))
    # Fallback: central crop with the aspect ratio clamped into `ratio`.
    in_ratio = width / height
    fw = float(width) if ratio[0] <= in_ratio <= ratio[1] else None
    if fw is None:
        if in_ratio < ratio[0]:
            fw, fh = float(width), round(width / ratio[0])
        else:
            fh, fw = float(height), round(height * ratio[1])
    else:
        fh = float(height)
    miss = first < 0
    w = torch.where(miss, torch.full_like(w, fw), w)
    h = torch.where(miss, torch.full_like(h, fh), h)
    x0 = torch.where(miss, torch.full_like(x0, (width - fw) // 2), x0)
    y0 = torch.where(miss, torch.full_like(y0, (height - fh) // 2), y0)
    flip = torch.rand(n, generator=generator, dtype=torch.float64) < 0.5
    # Map output coordinates in [-1, 1] to the crop box in input coordinates (align_corners=False).
    cx = (2 * x0 + w) / width - 1
    cy = (2 * y0 + h) / height - 1
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = torch.where(flip, -w / width, w / width)
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = cy
    return theta.float()
