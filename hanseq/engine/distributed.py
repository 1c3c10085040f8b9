"""One process or several (``torchrun``): rank, device, mixed precision, collectives.

Under torchrun (WORLD_SIZE > 1) each process joins a process group (NCCL on CUDA, gloo on CPU)
and takes the GPU of its LOCAL_RANK; the model is wrapped in DistributedDataParallel by the
trainer. Only rank 0 validates, logs and writes files.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist

from hanseq.engine.precision import cpu_bf16_pays


@dataclass
class Context:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(setting: str) -> torch.device:
    """auto -> the first CUDA device if any, else CPU."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {setting!r} asked for, but CUDA is not available here")
    return device


def setup(device_setting: str) -> Context:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Context(0, 1, resolve_device(device_setting))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_setting)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Context(dist.get_rank(), world_size, device)


def teardown(ctx: Context) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()


def broadcast_flag(ctx: Context, flag: bool) -> bool:
    """Rank 0's decision (stop early, say) reaches every rank."""
    if not ctx.distributed:
        return flag
    t = torch.tensor([int(flag)], device=ctx.device if ctx.device.type == "cuda" else "cpu")
    dist.broadcast(t, 0)
    return bool(t.item())


def autocast_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """auto: on CUDA bf16 where the GPU has it, else fp16; on a CPU bf16 only where it has
    AMX tiles (there a bf16 matmul runs ~3x fp32), else fp32: with AVX512-BF16 alone a bf16
    step measured slower than fp32, and on AVX2 alone bf16 is emulated, 6x slower
    (bench/README.md). fp16 is CUDA only."""
    if setting == "off":
        return None
    if device.type != "cuda":
        wanted = setting == "bf16" or (setting == "auto" and cpu_bf16_pays())
        return torch.bfloat16 if wanted else None
    if setting == "bf16" or (setting == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def autocast(dtype: torch.dtype | None, device: torch.device) -> AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()
