"""``mim-fast launch``: build and run the torchrun command line."""

import os
import subprocess
import sys

from .config import resolve
from .run import experiment_key


def torchrun_command(key, overrides, work_dir, nproc, smoke, torchrun_args) -> list[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    if not any(a.startswith(("--nnodes", "--rdzv", "--master_addr")) for a in torchrun_args):
        cmd.append("--standalone")
    cmd += list(torchrun_args)
    cmd += ["-m", "mim_fast.training.worker", key, "--work-dir", work_dir, *(["--smoke"] if smoke else []), *overrides]
    return cmd


def launch_main(args, rest) -> int:
    overrides = [r for r in rest if "=" in r and not r.startswith("-")] + list(args.overrides)
    torchrun_args = [r for r in rest if r.startswith("-")]
    if args.key and "=" in args.key:
        overrides, args.key = [args.key, *overrides], None
    try:
        key = experiment_key(args.key)
        config = resolve(key, overrides)
    except ValueError as err:
        print(f"mim-fast launch: {err}", file=sys.stderr)
        return 2
    nproc = args.nproc or config.launch.num_gpus or 1
    cmd = torchrun_command(key, overrides, args.work_dir, nproc, args.smoke, torchrun_args)
    print(" ".join(cmd), file=sys.stderr)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return subprocess.call(cmd, env=env)
