"""The dedup stage as one call, shared by `kd3 dedup` and the worker's dedup job."""

from __future__ import annotations

import os
from collections.abc import Callable

from dedup import embeddings
from dedup.errors import DedupError
from dedup.options import DedupOptions
from dedup.report import write_report
from dedup.run import dedup_pool, model_key_for_file


def run_dedup(
    pool_dir: str | os.PathLike,
    options: DedupOptions,
    *,
    eval_set: str | os.PathLike | None = None,
    teacher: str | os.PathLike | None = None,
    teacher_loader: Callable[[str], embeddings.FeatureExtractor] | None = None,
    progress: bool = False,
) -> dict:
    """Mark duplicates and evaluation overlaps in the pool's manifest, write
    POOL/dedup/report.json and contact_sheet.png, and return the report (dedup.report).

    Features come from `teacher_loader(teacher)` when a teacher checkpoint is given (cached
    under the checkpoint's digest), else from `options.network`; none when
    `options.embeddings` is off. dedup never imports distill: the caller passes the loader.
    """
    extractor, key = None, None
    if teacher is not None:
        if not options.embeddings:
            raise DedupError("--teacher gives features, --no-embeddings turns them off: pick one")
        if teacher_loader is None:
            raise DedupError("--teacher needs a teacher loader; this kd3 was built without one")
        try:
            key = model_key_for_file(teacher)
        except OSError as exc:
            raise DedupError(f"{teacher}: cannot read checkpoint ({exc.strerror})") from None
        extractor = teacher_loader(str(teacher))
    elif options.embeddings:
        extractor, key = embeddings.create_extractor(options.network), options.network
    result = dedup_pool(
        pool_dir,
        options,
        eval_set=eval_set,
        extractor=extractor,
        model_key=key,
        progress=progress,
    )
    return write_report(result)
