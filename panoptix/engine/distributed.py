"""``torch.distributed`` helpers. Launch with ``torchrun``; NCCL on GPUs, gloo on CPU."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_distributed() -> tuple[int, int, int]:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    Returns:
        (rank, world_size, local_rank); (0, 1, 0) without ``torchrun``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size(), local_rank


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask where the OS has one (``taskset``, a
    container's cpuset), else every CPU."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def thread_share_env(processes: int) -> dict[str, str]:
    """This process's environment with its usable CPUs' threads split between ``processes`` processes
    started side by side (``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS``, at least 1 each)."""
    threads = str(max(1, usable_cpus() // max(processes, 1)))
    return {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}


def launch_cpu_ranks(argv: list[str], ranks: int) -> int:
    """Run ``python -m panoptix.cli *argv`` as ``ranks`` CPU processes joined by gloo on this machine
    (``torchrun --standalone``), the CPU threads split between them, and return its exit code.

    On a 2-core CPU two 1-thread ranks trained the tiny demo config about 10% more images per second
    than one 2-thread process (docs/speed.md). GPUs stay hidden from the ranks; for GPU training
    launch ``torchrun`` yourself.
    """
    import subprocess
    import sys

    env = {**thread_share_env(ranks), "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
               "-m", "panoptix.cli", *argv]
    return subprocess.run(command, env=env).returncode


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if get_world_size() > 1:
        dist.barrier()


def all_reduce_mean(values: dict[str, float], device: torch.device | None = None) -> dict[str, float]:
    """Average scalar logs over ranks (a no-op on one process)."""
    if get_world_size() == 1 or not values:
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(values, (t / get_world_size()).tolist()))


def all_gather_objects(obj: object) -> list[object]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` on one process)."""
    if get_world_size() == 1:
        return [obj]
    out: list[object] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def any_rank(flag: bool, device: torch.device | None = None) -> bool:
    """True when ``flag`` is true on any rank."""
    if get_world_size() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def replicas_in_sync(model: torch.nn.Module, device: torch.device | None = None) -> bool:
    """Whether every rank holds the same parameters and floating-point buffers (memory embeddings,
    norm statistics): max - min of a checksum over ranks is 0."""
    if get_world_size() == 1:
        return True
    tensors = [*model.parameters(), *(b for b in model.buffers() if b.is_floating_point())]
    s = torch.stack([t.detach().double().sum() for t in tensors]).sum().reshape(1).to(device)
    hi, lo = s.clone(), s.clone()
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    return bool((hi - lo).abs().item() == 0)


def cleanup(barrier: bool = True) -> None:
    """Leave the process group. After a normal end, a barrier first, so that the ranks leave
    together; after an error none (the other ranks may never reach it). Free any DDP wrapper first
    (`Trainer.close` does, and says why)."""
    if dist.is_available() and dist.is_initialized():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()
