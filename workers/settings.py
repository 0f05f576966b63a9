"""Service settings, read from the environment (compose sets them; local runs use defaults)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from workers.references import local_roots_from_env


@dataclass(frozen=True)
class Settings:
    redis_url: str = "redis://127.0.0.1:6379/0"
    artifacts: str = "runs/artifacts"  # a directory or any fsspec URL
    # Folders whose files a job spec may name by plain path; none by default, so every input of
    # a queued job is an `artifact:` reference (kd3 submit and kd3 run upload local inputs).
    local_roots: tuple[str, ...] = ()
    # A job's lease expires this long after its worker stopped renewing it (worker died); the
    # job is then requeued and resumes from its last checkpoint.
    lease_ttl: float = 60.0
    recover_interval: float = 15.0
    # Must exceed the longest job: an unacked message is redelivered after this long.
    visibility_timeout: int = 7 * 24 * 3600
    task_time_limit: int = 3 * 24 * 3600

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        return cls(
            redis_url=env.get("KD3_REDIS_URL", cls.redis_url),
            artifacts=env.get("KD3_ARTIFACTS", cls.artifacts),
            local_roots=local_roots_from_env(env),
            lease_ttl=float(env.get("KD3_LEASE_TTL", cls.lease_ttl)),
            recover_interval=float(env.get("KD3_RECOVER_INTERVAL", cls.recover_interval)),
            visibility_timeout=int(env.get("KD3_VISIBILITY_TIMEOUT", cls.visibility_timeout)),
            task_time_limit=int(env.get("KD3_TASK_TIME_LIMIT", cls.task_time_limit)),
        )
