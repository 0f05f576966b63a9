"""Pooled teacher features for other stages (dedup uses them for near-duplicate search).

    extract = load_feature_extractor("teacher.pt")
    vectors = extract(images)   # uint8 (N, H, W, 3) numpy -> float32 (N, D) numpy

The checkpoint's own normalisation and input size are applied; the feature is the global
average pool of the last convolutional feature map (for a KD3 student: of P(F_S(x))).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def load_feature_extractor(
    checkpoint_path, device=None, batch_size: int | None = None, **load_kwargs
) -> Callable[[np.ndarray], np.ndarray]:
    """`load_kwargs` (arch, num_classes, mean, std, input_size) are for bare state_dicts."""
    import torch

    from distill.checkpoints import load_model
    from distill.data import Normalizer
    from distill.errors import DistillError
    from distill.evaluation import autocast_for, inference_batch_size
    from distill.trainer import pick_device

    model, meta = load_model(checkpoint_path, **load_kwargs)
    device = pick_device(device)
    batch_size = batch_size or inference_batch_size(device)
    model = model.to(device, memory_format=torch.channels_last).eval()
    norm = Normalizer(meta.mean, meta.std, meta.input_size, device, channels_last=True)

    @torch.inference_mode()
    def extract(images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise DistillError(
                f"feature extractor expects uint8 (N,H,W,3) images, got {images.dtype} "
                f"{images.shape}"
            )
        out = []
        batch = torch.from_numpy(np.ascontiguousarray(images))
        with autocast_for(device):
            for part in batch.split(batch_size):
                fmap = model.forward_features(norm.eval(part))
                out.append(model.pool(fmap).float().cpu())
        if not out:
            return np.zeros((0, model.feature_dim), dtype=np.float32)
        return torch.cat(out).numpy().astype(np.float32, copy=False)

    extract.dim = model.feature_dim
    extract.meta = meta
    return extract
