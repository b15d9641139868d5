"""Many processes with torchrun: who this process is, and the few things all processes must agree on.

    torchrun --nproc-per-node 2 $(which rnn-train) --preset shakespeare-lstm --data text.txt --out run

Without torchrun (no WORLD_SIZE in the environment, or a world of one) a run has one `Ranks.single()` and every
method below is the identity, so a plain `rnn-train` runs exactly as before. Under torchrun the processes train
one model with DistributedDataParallel (gloo on CPU, NCCL on CUDA). Decisions that depend on a clock or a signal
(stop, log, validate) are agreed on every step over a gloo group on the host, so no process waits in a collective
that another skipped, and the GPU is never made to wait for the agreement.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from datetime import timedelta

import torch
from torch import distributed as dist
from torch import nn

from rnnx.runtime.errors import RnnxError, UsageError

TIMEOUT = timedelta(minutes=10)  # a process that stops answering ends the run instead of hanging it


class Ranks:
    def __init__(self, rank: int = 0, world: int = 1, local: int = 0, group: object = None) -> None:
        self.rank, self.world, self.local, self._group = rank, world, local, group

    @classmethod
    def single(cls) -> Ranks:
        return cls()

    @property
    def main(self) -> bool:
        """The process that writes files and shows progress."""
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """This process's GPU (torchrun's LOCAL_RANK) where the run is on CUDA."""
        if device.type != "cuda" or self.world == 1:
            return device
        torch.cuda.set_device(self.local)
        return torch.device("cuda", self.local)

    def seed(self, rng_seed: int, step: int) -> int:
        """A seed of this process's own: dropout masks and stream resets differ between processes."""
        return (rng_seed * 1_000_003 + step * 7919 + self.rank) % 2**63

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module whose backward averages gradients over the processes (the model itself for one)."""
        if self.world == 1:
            return model
        ids = [model.head.weight.device.index] if model.head.weight.is_cuda else None  # type: ignore[union-attr]
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def _reduce(self, values: list[float], op: object) -> list[float]:
        if self.world == 1:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64)
        dist.all_reduce(t, op=op, group=self._group)
        return t.tolist()

    def agree(self, values: list[float]) -> list[float]:
        """The largest of each value over the processes (a flag any process raised is raised for all)."""
        return self._reduce(values, dist.ReduceOp.MAX if self.world > 1 else None)

    def total(self, values: list[float]) -> list[float]:
        """The sum of each value over the processes."""
        return self._reduce(values, dist.ReduceOp.SUM if self.world > 1 else None)

    def gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every process's copy of a CPU tensor of the same shape, in rank order."""
        if self.world == 1:
            return [tensor]
        parts = [torch.empty_like(tensor) for _ in range(self.world)]
        dist.all_gather(parts, tensor.contiguous(), group=self._group)
        return parts

    @contextlib.contextmanager
    def first(self) -> Iterator[None]:
        """Run the block on the first process and share its outcome: an error there ends every process."""
        failed = True
        try:
            yield
            failed = False
        finally:
            if self.world > 1 and self.agree([failed])[0] and not failed:
                raise RnnxError("the first process (rank 0) could not go on: see its error")


@contextlib.contextmanager
def processes(device: torch.device) -> Iterator[Ranks]:
    """This process's place among torchrun's processes (a single one without torchrun), for the block."""
    world = _world_size(os.environ.get("WORLD_SIZE", ""))
    if world <= 1:
        yield Ranks.single()
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    try:
        dist.init_process_group(backend, timeout=TIMEOUT)
    except (ValueError, RuntimeError) as exc:  # RANK or MASTER_PORT missing or not a number, a port taken, ...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UsageError(
            f"the processes of a {world}-process run could not meet ({first}): start rnn-train with torchrun "
            "--nproc-per-node N, or without WORLD_SIZE in the environment for one process"
        ) from None
    try:
        group = dist.new_group(backend="gloo", timeout=TIMEOUT) if backend != "gloo" else None
        yield Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), group)
        # A run that ended well: no process tears its group down while another still talks to it (rank 1 once
        # aborted with "terminate called without an active exception" as rank 0 wrote its last files).
        dist.barrier(group=group)
    finally:
        dist.destroy_process_group()


def _world_size(text: str) -> int:
    """torchrun's WORLD_SIZE: empty or absent is one process."""
    if not text.strip():
        return 1
    try:
        world = int(text)
    except ValueError:
        world = 0
    if world < 1:
        raise UsageError(f"WORLD_SIZE={text[:40]!r} is not a number of processes: launch rnn-train with torchrun")
    return world
