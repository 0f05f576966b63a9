"""One distillation run over several processes: torchrun-style DistributedDataParallel.

`kd3 distill --processes N` (and a distill job whose options ask for N > 1) starts
`torch.distributed.run` with N ranks on this machine, each running this module's main on the
run's job file; the calling process follows the run through its metrics.jsonl (progress,
cancellation: it stops the ranks, the last epoch's checkpoint stays) and returns its result.
One rank per GPU (NCCL); on a host without GPUs the ranks use gloo on CPU (tests do that).

How the work is split (distill.trainer with `Ranks`):
- every rank draws the same epoch order (the same seeded generator) and trains on its share of
  each global batch: DDP averages the gradients, so a step is one step on the global batch;
- the teacher's pass over the pool and KD3's selection vote run on each rank's contiguous
  shard of the pool, and every rank gathers all of them, so all choose the same images;
- rank 0 evaluates, writes the checkpoints, metrics and report, and logs.
BatchNorm statistics are each rank's own during a step (as DDP does); rank 0's are broadcast
before each selection pass and evaluation. So N ranks match one process within noise, not bit
for bit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

JOB_FILE = ".distributed-job.json"  # in the run's folder: what every rank runs


@dataclass(frozen=True)
class Ranks:
    """This process's place among the run's processes (one process: rank 0 of 1)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> tuple[int, int]:
        """This rank's contiguous part [start, stop) of n items."""
        per = -(-n // self.world)
        return min(n, self.rank * per), min(n, (self.rank + 1) * per)

    def batch_part(self, idx: torch.Tensor) -> torch.Tensor:
        """This rank's part of a global batch."""
        return idx.tensor_split(self.world)[self.rank] if self.world > 1 else idx

    def gather(self, part: torch.Tensor, n: int) -> torch.Tensor:
        """Every rank's shard (rank order), concatenated: the whole of n rows, on every rank."""
        if self.world == 1:
            return part
        per = -(-n // self.world)
        padded = part.new_zeros((per, *part.shape[1:]), device=_wire())
        padded[: len(part)] = part
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded)
        sizes = [
            stop - start
            for start, stop in (Ranks(r, self.world).shard(n) for r in range(self.world))
        ]
        return torch.cat([p[:size] for p, size in zip(parts, sizes, strict=True)]).to(part.device)

    def broadcast(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rank 0's `tensor` (of the same shape on every rank)."""
        if self.world == 1:
            return tensor
        wired = tensor.to(_wire())
        dist.broadcast(wired, 0)
        return wired.to(tensor.device)

    def sum(self, values: dict[str, float]) -> dict[str, float]:
        """`values` summed over the ranks (same keys on every rank)."""
        if self.world == 1 or not values:
            return values
        keys = sorted(values)
        total = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=_wire())
        dist.all_reduce(total)
        return dict(zip(keys, total.tolist(), strict=True))

    def broadcast_buffers(self, module: torch.nn.Module) -> None:
        """Rank 0's buffers (BatchNorm statistics) on every rank."""
        if self.world > 1:
            for buffer in module.buffers():
                buffer.copy_(self.broadcast(buffer))


def _wire() -> torch.device:
    """Where the backend's collectives take tensors: the rank's GPU for NCCL, else the host."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def from_environment() -> Ranks:
    """The ranks torchrun describes in the environment (one process when it set none)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks()
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Ranks(dist.get_rank(), dist.get_world_size())


def rank_device(device: str | None) -> str | None:
    """This rank's device: its own GPU (LOCAL_RANK) where the run uses GPUs."""
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if (device or "").startswith("cuda") or (device is None and torch.cuda.is_available()):
        return f"cuda:{local}"  # rank k uses GPU k, whichever GPU the options named
    return device


def launch(job: dict, out: Path, processes: int, on_epoch, log) -> None:
    """Run `job` (distill.stage.run_distill's arguments, JSON-able) on `processes` ranks and
    wait. The ranks' output (rank 0's log lines) goes to `log` line by line, and to
    OUT/distributed.log; `on_epoch(metrics)` is called for each epoch rank 0 writes, and stops
    the run when it returns True (TrainingCancelled). Raises DistillError when a rank fails."""
    from distill.errors import DistillError, TrainingCancelled

    out.mkdir(parents=True, exist_ok=True)
    (out / JOB_FILE).write_text(json.dumps(job))
    env = dict(os.environ)
    if not torch.cuda.is_available():  # gloo: the ranks talk over loopback only
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc-per-node={processes}", "-m", "distill.distributed", str(out / JOB_FILE)]
    log(f"training on {processes} processes (DistributedDataParallel)")
    metrics = out / "metrics.jsonl"
    seen = len(metrics.read_text().splitlines()) if metrics.exists() else 0
    errors = out / "distributed.log"
    with open(errors, "w") as err, open(errors) as follow:
        process = subprocess.Popen(
            cmd, env=env, stdout=err, stderr=err, preexec_fn=_own_group_ended_with_parent
        )
        try:
            while True:
                done = process.poll() is not None
                for line in follow.readlines():
                    log(line.rstrip("\n"))
                lines = metrics.read_text().splitlines() if metrics.exists() else []
                for line in lines[seen:]:
                    if on_epoch(json.loads(line)):
                        raise TrainingCancelled(f"cancelled after epoch {len(lines)}")
                seen = len(lines)
                if done:
                    break
                time.sleep(0.5)
        finally:
            if process.poll() is None:  # cancelled, or this process is being stopped
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
    if process.returncode != 0:
        tail = errors.read_text()[-3000:]
        message = [ln for ln in tail.splitlines() if "DistillError" in ln]
        raise DistillError(
            (message[-1].split("DistillError: ", 1)[-1] if message else "")
            or f"the training processes failed (exit {process.returncode}); see {errors}"
        )


def _own_group_ended_with_parent() -> None:
    """In the launcher's child, before torchrun starts: a process group of its own (so a
    cancel stops every rank), and SIGTERM when the process that started it dies (a killed
    worker must not leave ranks writing into a run another worker resumes; torchrun stops its
    ranks on SIGTERM)."""
    import ctypes

    os.setsid()
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    """One rank: run the job file's run_distill with this rank's place and device."""
    from distill.options import DistillOptions
    from distill.stage import run_distill

    job = json.loads(Path((argv or sys.argv[1:])[0]).read_text())
    ranks = from_environment()
    options = DistillOptions.model_validate(job.pop("options"))
    options = options.model_copy(update={"device": rank_device(options.device), "processes": 1})
    try:
        run_distill(options, **job, ranks=ranks, log=None if ranks.main else lambda m: None)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
