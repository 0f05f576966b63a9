"""Image embeddings for near-duplicate search: the extractor type, default networks, FAISS search.

A feature extractor is any callable taking a uint8 NHWC numpy batch and returning float32 (N, D)
features (`distill.features.load_feature_extractor` returns one for a teacher checkpoint). An
extractor may carry `input_size` (pixels, square); images are resized to it (default 32).

Built-in networks (no pretrained weights can be downloaded, so none is learned; the default is
dedup.options.DedupOptions.network):
  thumbnail-8   8x8 colour thumbnail, mean removed, unit length: cosine similarity is the
                correlation of two thumbnails. Measured on CIFAR-10 vs Tiny-ImageNet (see
                bench/dedup_quality.py): robust to resize, re-encoding and colour jitter,
                partly to crops, not to rotation.
  thumbnail-16  the same at 16x16: fewer false matches, less tolerant of crops.

dedup.run centres every network's features on the pool's mean before comparing them (`centred`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

FeatureExtractor = Callable[[np.ndarray], np.ndarray]
FLAT_LIMIT = 200_000  # database size above which the float index is IVF
SEARCH_CHUNK = 65_536  # queries per FAISS search call (one progress step)


def _thumbnail_module(grid: int):
    import torch

    class Thumbnail(torch.nn.Module):
        """Area-average to grid x grid colour, remove the mean, scale to unit length."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f = torch.nn.functional.adaptive_avg_pool2d(x.float(), grid).flatten(1)
            f = f - f.mean(dim=1, keepdim=True)
            return torch.nn.functional.normalize(f, dim=1, eps=1e-6)

    return Thumbnail()


NETWORKS: dict[str, Callable[[], object]] = {
    "thumbnail-8": lambda: _thumbnail_module(8),
    "thumbnail-16": lambda: _thumbnail_module(16),
}


class TorchExtractor:
    """Wrap a torch module taking float NCHW in [0, 1] as a FeatureExtractor (GPU if present)."""

    def __init__(self, module, input_size: int = 32, device: str | None = None, batch: int = 512):
        import torch

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.module = module.to(self.device).eval()
        self.input_size = input_size
        self.batch = batch

    def __call__(self, images: np.ndarray) -> np.ndarray:
        import torch

        out = []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch):
                x = torch.from_numpy(np.ascontiguousarray(images[start : start + self.batch]))
                x = x.to(self.device).permute(0, 3, 1, 2).float() / 255.0
                out.append(self.module(x).float().cpu().numpy())
        return np.concatenate(out) if out else np.empty((0, 0), np.float32)


def create_extractor(name: str, device: str | None = None) -> TorchExtractor:
    if name not in NETWORKS:
        from dedup.errors import DedupError

        raise DedupError(f"unknown network {name!r}; registered: {', '.join(NETWORKS)}")
    return TorchExtractor(NETWORKS[name](), device=device)


def normalize(features: np.ndarray) -> np.ndarray:
    features = np.ascontiguousarray(features, dtype=np.float32)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)


def centred(features: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Subtract `mean` (the pool's mean feature), then unit length.

    Pooled post-ReLU features are all non-negative, so raw cosine similarities of unrelated
    images sit near 1 (a barely trained teacher: median 0.994); after removing the shared mean,
    cosine similarity measures how two images differ from the typical pool image. The same
    mean is removed from pool and evaluation features so they stay comparable.
    """
    return normalize(np.asarray(features, np.float32) - np.asarray(mean, np.float32))


@dataclass
class Matches:
    """Query index, database index and cosine similarity (parallel arrays), similarity >= S."""

    query: np.ndarray
    db: np.ndarray
    sim: np.ndarray


def similar(
    db: np.ndarray,
    queries: np.ndarray,
    threshold: float,
    k: int = 16,
    progress: bool = False,
    desc: str = "feature search",
    nprobe: int = 16,
) -> Matches:
    """Database items with cosine similarity >= threshold to each query (up to k per query).

    Flat inner-product index for small databases, IVF for large ones; on the GPU when FAISS
    sees one. A k-nearest-neighbour search then a threshold (GPU indexes have no range search);
    `nprobe` inverted lists are searched per query (IVF).
    """
    parts = list(similar_chunks(db, queries, threshold, k, progress, desc, nprobe))
    if not parts:
        return Matches(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32))
    return Matches(
        *(np.concatenate([getattr(m, f) for m in parts]) for f in ("query", "db", "sim"))
    )


def similar_chunks(
    db: np.ndarray,
    queries: np.ndarray,
    threshold: float,
    k: int = 16,
    progress: bool = False,
    desc: str = "feature search",
    nprobe: int = 16,
):
    """`similar`, one Matches per SEARCH_CHUNK queries (query indices global), so a caller can
    reduce each before the next: within a chunk the matches are ordered by query, then by
    similarity, highest first."""
    import faiss

    db, queries = normalize(db), normalize(queries)
    if len(db) == 0 or len(queries) == 0:
        return
    dim = db.shape[1]
    if len(db) <= FLAT_LIMIT:
        index = faiss.IndexFlatIP(dim)
    else:
        nlist = int(4 * np.sqrt(len(db)))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(db[np.random.default_rng(0).permutation(len(db))[: 64 * nlist]])
        index.nprobe = nprobe
    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(db)
    starts = range(0, len(queries), SEARCH_CHUNK)
    for start in tqdm(starts, disable=not progress, desc=desc, unit="chunk"):
        sims, ids = index.search(queries[start : start + SEARCH_CHUNK], min(k, len(db)))
        keep = (ids >= 0) & (sims >= np.float32(threshold))
        rows = np.nonzero(keep)[0] + start
        yield Matches(rows.astype(np.int64), ids[keep].astype(np.int64), sims[keep])
