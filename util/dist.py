"""Thin helpers over torch.distributed; everything degrades to a single process."""
import datetime
import os

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device: str = "cuda", dist_url: str = "env://", timeout_minutes: int = 30):
    """Join the process group started by torchrun; NCCL on CUDA, gloo on CPU.

    Returns (rank, world_size, local_rank). Without torchrun's environment this is a no-op.
    """
    if not launched_by_torchrun():
        return 0, 1, 0
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = str(device).startswith("cuda") and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo", init_method=dist_url, rank=rank,
                            world_size=world_size, timeout=datetime.timedelta(minutes=timeout_minutes))
    dist.barrier()
    return rank, world_size, local_rank


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` from every rank along dim 0, keeping the autograd graph.

    Gradients flow back to each rank's own slice (torch.distributed.nn.all_gather).
    """
    if get_world_size() == 1:
        return tensor
    return torch.cat(dist_nn.all_gather(tensor.contiguous()), dim=0)


def all_reduce_mean(value: float) -> float:
    if get_world_size() == 1:
        return value
    t = torch.tensor(float(value), device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t)
    return t.item() / get_world_size()
