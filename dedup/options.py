"""The dedup stage's options: the one place their defaults and bounds are written.

`kd3 dedup` builds its flags from this model (common.options), the pipeline config's `dedup:`
section and the dedup job spec subclass it (workers/config.py), and dedup.stage.run_dedup takes
it. Light imports only: `kd3 --help` reads it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

# Names only; dedup.embeddings.NETWORKS, dedup.hashing.HASH_KINDS and binary_index.METHODS
# implement them (tests/dedup/test_dedup_options.py checks that they agree).
Network = Literal["thumbnail-8", "thumbnail-16"]
HashKind = Literal["phash", "dhash"]
IndexMethod = Literal["auto", "flat", "multihash", "ivf"]


class DedupOptions(BaseModel, extra="forbid"):
    radius: int = Field(
        4,
        ge=0,
        le=63,
        description="two images are near-duplicates when their 64-bit hashes differ in at most "
        "this many bits (inclusive; pHash distances are even, so 4 and 5 act alike)",
        json_schema_extra={"metavar": "BITS"},
    )
    similarity: float = Field(
        0.97,
        gt=0,
        le=1,
        description="feature cosine similarity (inclusive) at which two pool images become a "
        "duplicate candidate; the alignment check (--verify-sim) must confirm it",
        json_schema_extra={"flag": "--sim", "metavar": "S"},
    )
    verify_sim: float = Field(
        0.93,
        ge=-1,
        le=1,
        description="alignment score (inclusive) that an evaluation-overlap candidate or a "
        "feature-linked duplicate pair needs (dedup/verify.py: crops, small turns, mirrors, "
        "overlays); an overlap candidate whose image also lines up well with other evaluation "
        "images needs more (dedup/decontaminate.py); -1 accepts every candidate",
        json_schema_extra={"metavar": "V"},
    )
    learned: bool = Field(
        True,
        description="use the learned copy descriptor (dedup/copy_net.py) against the evaluation "
        "set: the items it puts nearest a pool image become overlap candidates, and a candidate "
        "it rates as sure needs less alignment (dedup/decontaminate.py LEARNED_SURE, "
        "VERIFY_SIM_LEARNED; --no-learned: neither, and it is not computed)",
    )
    network: Network = Field(
        "thumbnail-8",
        description="feature network used when no --teacher is given",
    )
    embeddings: bool = Field(
        True,
        description="compare image features as well as hashes (--no-embeddings: hashes only)",
    )
    hash: HashKind = Field("phash", description="perceptual hash compared within --radius")
    index: IndexMethod = Field(
        "auto",
        description="FAISS binary index for the Hamming search: flat and multihash are exact, "
        "ivf approximate and fastest on millions; auto picks by pool size",
    )
    eval_crops: bool = Field(
        True,
        description="also index crops and small turns of each evaluation image, so cropped and "
        "rotated copies in the pool become candidates by hash and copy descriptor",
    )
