"""The teacher's view of a pool: what it predicts for every kept image, and per class how many
images are useful to distil from.

    result = score_pool("pools/pets", "teacher.pt")
    print(result.table())

Every kept image gets four manifest columns: `teacher_class` (the teacher's top class, by
name), `teacher_confidence` (its probability), `teacher_class_prob` (the probability of the
class the image was crawled for; null when it has none) and `teacher_agrees` (the top class is
the crawled class). `teacher_id` names the checkpoint (a digest of its bytes), so scoring again
with the same teacher only scores images added since, and another teacher scores them all.

Per class (classes.json, in order), the yield:
    crawled  rows crawled or imported for the class, whatever their status
    kept     of those, kept after dedup (not a duplicate, test overlap or invalid)
    useful   of those, the teacher agrees with at least `min_confidence`
    elsewhere  kept images crawled for another class (or none) that the teacher puts in this
             class with at least `min_confidence`: where the pool holds more of it
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pool import manifest
from pool.errors import PoolError
from pool.store import Pool
from steer.options import ScoreOptions

BATCH = 1024  # images decoded and scored at a time

COLUMNS = ("teacher_class", "teacher_confidence", "teacher_class_prob", "teacher_agrees",
           "teacher_id")  # fmt: skip


@dataclass
class ClassYield:
    name: str
    crawled: int = 0
    kept: int = 0
    useful: int = 0
    elsewhere: int = 0


@dataclass
class PoolScore:
    pool: str
    teacher: str
    teacher_id: str
    min_confidence: float
    scored_now: int  # images scored by this call (the rest kept their scores)
    unreadable: list[str] = field(default_factory=list)  # kept images that could not be decoded
    classes: list[ClassYield] = field(default_factory=list)

    def by_name(self) -> dict[str, ClassYield]:
        return {c.name: c for c in self.classes}

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        width = max([len("class"), *(len(c.name) for c in self.classes)])
        head = f"{'class':<{width}} {'crawled':>8} {'kept':>8} {'useful':>8} {'elsewhere':>10}"
        lines = [head]
        for c in self.classes:
            lines.append(
                f"{c.name:<{width}} {c.crawled:>8} {c.kept:>8} {c.useful:>8} {c.elsewhere:>10}"
            )
        total = ClassYield("total")
        for c in self.classes:
            total.crawled, total.kept = total.crawled + c.crawled, total.kept + c.kept
            total.useful, total.elsewhere = total.useful + c.useful, total.elsewhere + c.elsewhere
        lines.append(
            f"{'total':<{width}} {total.crawled:>8} {total.kept:>8} {total.useful:>8} "
            f"{total.elsewhere:>10}"
        )
        return "\n".join(lines)


def checkpoint_id(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def score_pool(
    pool_dir: str | os.PathLike,
    teacher: str | os.PathLike,
    options: ScoreOptions | None = None,
    *,
    teacher_load: dict | None = None,
    log: Callable[[str], None] | None = None,
) -> PoolScore:
    """Score the kept images the teacher has not scored yet, write the columns into the
    manifest, and return the per-class yield. Refused in one line (PoolError, DistillError)
    when the pool has no classes or they do not match the teacher's."""
    from distill.checkpoints import load_model
    from distill.contract import ClassInfo, match_classes

    options = options or ScoreOptions()
    pool = Pool.open(pool_dir)
    classes = pool.classes()
    if classes is None:
        raise PoolError(f"{pool.root}: the pool has no classes.json to score against")
    model, meta = load_model(teacher, **(teacher_load or {}))
    (mapping,) = match_classes(
        ClassInfo("teacher", meta.class_names, meta.num_classes),
        [ClassInfo(f"pool {pool.root}", classes.names, len(classes))],
        options.class_map,
    )
    if mapping.note and log:
        log(mapping.note)
    to_teacher = mapping.index or list(range(len(classes)))
    # Each teacher class by the pool's name for it (renamed by class_map, or matched by count
    # when the teacher has no names); the teacher's own name for classes the pool lacks.
    names = list(meta.class_names or [str(i) for i in range(meta.num_classes)])
    for i, t in enumerate(to_teacher):
        names[t] = classes.names[i]
    own = checkpoint_id(teacher)

    table = pool.manifest()
    scored = pc.fill_null(pc.equal(manifest.column(table, "teacher_id"), own), False)
    todo = table.filter(pc.and_(pc.equal(table["status"], "kept"), pc.invert(scored)))
    crawled_index = {name: to_teacher[i] for i, name in enumerate(classes.names)}
    updates, unreadable = _score_rows(
        pool, todo, model, meta, options.device, crawled_index, names, own
    )
    if updates:
        pool.update(lambda t: manifest.update_rows(t, updates))
    result = PoolScore(
        str(pool.root), str(teacher), own, options.min_confidence, len(updates), unreadable
    )
    result.classes = class_yields(pool.manifest(), classes.names, own, options.min_confidence)
    return result


def _score_rows(pool, rows: pa.Table, model, meta, device, crawled_index, names, own):
    import torch

    from distill.data import Normalizer
    from distill.evaluation import predict_logits
    from distill.trainer import pick_device

    device = pick_device(device)
    model = model.to(device, memory_format=torch.channels_last).eval()
    norm = Normalizer(meta.mean, meta.std, meta.input_size, device, channels_last=True)
    shas, paths = rows["sha256"].to_pylist(), rows["path"].to_pylist()
    crawled = rows["class_name"].to_pylist()
    updates: dict[str, dict] = {}
    unreadable: list[str] = []
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as ex:
        for start in range(0, len(shas), BATCH):
            part = slice(start, start + BATCH)
            decoded = list(ex.map(lambda p: _decode(pool, p, meta.input_size), paths[part]))
            ok = [i for i, img in enumerate(decoded) if img is not None]
            unreadable += [paths[part][i] for i, img in enumerate(decoded) if img is None]
            if not ok:
                continue
            batch = torch.from_numpy(np.stack([decoded[i] for i in ok]))
            probs = predict_logits(model, batch, norm).softmax(1).cpu().numpy()
            for row, p in zip(ok, probs, strict=True):
                sha, wanted = shas[part][row], crawled[part][row]
                top = int(p.argmax())
                target = crawled_index.get(wanted)
                updates[sha] = {
                    "teacher_class": names[top],
                    "teacher_confidence": float(p[top]),
                    "teacher_class_prob": None if target is None else float(p[target]),
                    "teacher_agrees": target is not None and top == target,
                    "teacher_id": own,
                }
    return updates, unreadable


def _decode(pool: Pool, path: str, size: int) -> np.ndarray | None:
    from pool.errors import InvalidImage
    from pool.images import decode_rgb, resize_center_crop

    try:
        return np.asarray(resize_center_crop(decode_rgb(pool.read_bytes(path)), size), np.uint8)
    except (PoolError, InvalidImage):
        return None


def class_yields(
    table: pa.Table, names: list[str], own: str, min_confidence: float
) -> list[ClassYield]:
    """The per-class yield of a scored manifest (see the module docstring)."""
    out = {n: ClassYield(n) for n in names}
    read = ("class_name", "status", "teacher_id", "teacher_class", "teacher_confidence")
    columns = [manifest.column(table, name).to_pylist() for name in read]
    for wanted, status, teacher_id, top, conf in zip(*columns, strict=True):
        mine = out.get(wanted)
        if mine is not None:
            mine.crawled += 1
            mine.kept += status == "kept"
        confident = status == "kept" and teacher_id == own and conf >= min_confidence
        if not confident or top not in out:
            continue
        if top == wanted:
            out[wanted].useful += 1
        else:
            out[top].elsewhere += 1
    return list(out.values())


def load_scores(pool_dir: str | os.PathLike) -> pa.Table:
    """The manifest rows with their teacher columns (null where unscored)."""
    table = Pool.open(pool_dir).manifest()
    for name in COLUMNS:
        if name not in table.column_names:
            table = table.append_column(name, manifest.column(table, name))
    return table


def report_dir(pool_dir: str | os.PathLike) -> Path:
    return Path(pool_dir) / "score"
