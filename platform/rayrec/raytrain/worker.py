"""The worker side of a Ray Train run: where this worker stands, and reporting a checkpoint."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import Any, NamedTuple

import ray.train
import ray.train.torch
import torch


class Worker(NamedTuple):
    """This worker's rank, the number of workers and its device (its GPU with use_gpu)."""

    rank: int
    world: int
    device: torch.device


def start_worker(torch_threads: int | None = None) -> Worker:
    """Where this worker stands; first sets torch's intra-op threads (None: Ray's default, the
    CPUs the worker reserves; 0: every core of its node)."""
    if torch_threads is not None:
        torch.set_num_threads(torch_threads or os.cpu_count() or 1)
    ctx = ray.train.get_context()
    return Worker(ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device())


@contextlib.contextmanager
def reported_checkpoint(metrics: dict[str, Any], dir_name: str, sharded: bool = False) -> Iterator[str]:
    """A temporary directory for every rank to write the checkpoint in (writing may gather
    collectively), reported with ``metrics`` on leaving: rank 0's files, or with ``sharded``
    every rank's (DeepSpeed state, one shard per rank)."""
    rank = ray.train.get_context().get_world_rank()
    with tempfile.TemporaryDirectory() as tmp:
        yield tmp
        checkpoint = ray.train.Checkpoint.from_directory(tmp) if sharded or rank == 0 else None
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=dir_name)
