"""Several training processes in lock-step: torch's distributed data parallel.

One process per device (``nccl`` between GPUs, ``gloo`` between CPU processes), started
with ``torch.multiprocessing.spawn`` as MONAI Label's own trainers do. Every rank builds
the same model, walks the same shuffled list of clips and takes its own share of it, and
DDP averages the gradients, so the weights stay identical on all ranks. Only rank 0
validates and publishes. Every decision that changes how many steps a rank runs (a clip
that yields no sample, the time budget) is agreed collectively, or the ranks would wait
on each other forever.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

# Rank 0 validates while the others wait at a barrier; validation of many studies is slow on CPU.
BARRIER_TIMEOUT = timedelta(hours=6)


def training_devices(device: str, multi_gpu: bool = False, gpus: str = "all") -> list:
    """The devices to train on: one, or one per GPU for ``multi_gpu`` (``gpus``: "all" or "0,2")."""
    from ..model_source import pick_device

    single = pick_device(device)
    if not multi_gpu:
        return [single]
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        logger.warning("multi_gpu requested but no CUDA device is available; training on %s in one process", single)
        return [single]
    wanted = (gpus or "all").strip().lower()
    if wanted == "all":
        indices = list(range(count))
    else:
        try:
            indices = [int(part) for part in wanted.split(",") if part.strip()]
        except ValueError as err:
            raise ValueError(f"gpus must be 'all' or comma-separated GPU indices, got {gpus!r}") from err
        missing = [i for i in indices if not 0 <= i < count]
        if missing or not indices:
            raise ValueError(f"gpus {gpus!r}: no such GPU {missing or ''} (this machine has {count})")
    return [f"cuda:{i}" for i in dict.fromkeys(indices)]


@dataclass
class Ranks:
    """This process's place among the training processes (a single process is rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def shard(self, items: list) -> list:
        """This rank's share of a list every rank holds in the same order; equal lengths."""
        if not self.distributed:
            return items
        per_rank = len(items) // self.world_size
        return items[self.rank :: self.world_size][:per_rank]

    def _reduce(self, value: float, op) -> float:
        if not self.distributed:
            return value
        tensor = torch.tensor([float(value)], device=self.device)
        dist.all_reduce(tensor, op=op)
        return float(tensor.item())

    def all(self, flag: bool) -> bool:
        return bool(self._reduce(1.0 if flag else 0.0, dist.ReduceOp.MIN))

    def any(self, flag: bool) -> bool:
        return bool(self._reduce(1.0 if flag else 0.0, dist.ReduceOp.MAX))

    def mean(self, value: float) -> float:
        return self._reduce(value, dist.ReduceOp.SUM) / self.world_size

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model to call in training: DDP around it when distributed, itself otherwise."""
        if not self.distributed:
            return model
        # SAM2Train leaves parts unused on some steps (e.g. no mask prompt, no memory on frame 0).
        # device_ids=None: the module sits on one device and batches are moved there by the caller.
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=None, find_unused_parameters=True)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, fn, devices: list, port: int, result_path: str, args: tuple) -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                            format=f"[rank {rank}] %(asctime)s %(name)s: %(message)s")
    device = devices[rank]
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(torch.device(device))
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=len(devices), timeout=BARRIER_TIMEOUT)
    try:
        result = fn(Ranks(rank, len(devices), device), *args)
        if rank == 0:
            Path(result_path).write_text(json.dumps(result, default=str))
    finally:
        dist.destroy_process_group()


def launch(fn, devices: list, *args):
    """Run ``fn(ranks, *args)`` in one process per device; returns rank 0's (JSON-able) result.

    ``fn`` and ``args`` must pickle (processes are spawned, not forked). A failure on any
    rank raises here, with that rank's traceback.
    """
    if len(devices) < 2:
        return fn(Ranks(0, 1, devices[0]), *args)
    handle, result_path = tempfile.mkstemp(prefix="medsam2-ddp-", suffix=".json")
    os.close(handle)
    try:
        logger.info("distributed training: %d processes on %s", len(devices), ", ".join(devices))
        torch.multiprocessing.spawn(_worker, args=(fn, list(devices), _free_port(), result_path, args),
                                    nprocs=len(devices), join=True)
        return json.loads(Path(result_path).read_text())
    finally:
        os.unlink(result_path)
