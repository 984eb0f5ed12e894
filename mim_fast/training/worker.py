"""One training process under torchrun: ``python -m mim_fast.training.worker [train args]``.

Reads RANK / WORLD_SIZE / LOCAL_RANK from the environment (set by torchrun), joins the
process group (NCCL on GPUs, gloo on CPU), trains with the data sharded by rank and the
gradients averaged across ranks, then leaves the group.
"""

import argparse
import os
import sys

import torch
import torch.distributed as dist

from .run import train_main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="mim_fast.training.worker")
    parser.add_argument("key", nargs="?")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--work-dir", required=True)
    parser.add_argument("--smoke", action="store_true")
    args, rest = parser.parse_known_args(argv)
    overrides = list(args.overrides) + [r for r in rest if "=" in r]
    if args.key and "=" in args.key:
        overrides, args.key = [args.key, *overrides], None
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = torch.cuda.is_available() and "trainer.device=cpu" not in overrides and not args.smoke
    if use_cuda:
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if use_cuda else "gloo")
    try:
        if use_cuda:
            overrides.append(f"trainer.device=cuda:{local}")
        code = train_main(args.key, overrides, args.work_dir, args.smoke, rank=rank, world_size=world)
        dist.barrier()  # every rank done (rank 0 may still be writing the last checkpoint)
        return code
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
