"""``mim-fast launch``: build and run the torchrun command line."""

import os
import subprocess
import sys

from .config import resolve
from ..experiments import EXPERIMENTS
from .run import experiment_key


def torchrun_command(key, overrides, work_dir, nproc, smoke, torchrun_args, num_nodes: int = 1) -> list[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    if num_nodes > 1 and not any(a.startswith("--nnodes") for a in torchrun_args):
        cmd.append(f"--nnodes={num_nodes}")
    if num_nodes <= 1 and not any(a.startswith(("--nnodes", "--rdzv", "--master_addr")) for a in torchrun_args):
        cmd.append("--standalone")
    cmd += list(torchrun_args)
    cmd += ["-m", "mim_fast.training.worker", key, "--work-dir", work_dir, *(["--smoke"] if smoke else []), *overrides]
    return cmd


def _split_launch_args(tokens: list[str]):
    """(key, work_dir, nproc, smoke, overrides, torchrun_args) from the words after ``launch``.

    The key is the first word naming an experiment; ``section.key=value`` words are
    overrides; ``--nproc``, ``--work-dir`` and ``--smoke`` are ours; every other word (torchrun
    options and their values) is passed to torchrun in order.
    """
    key = work_dir = nproc = None
    smoke = False
    overrides, torchrun_args = [], []
    it = iter(tokens)
    for word in it:
        name, eq, value = word.partition("=")
        if name in ("--nproc", "--work-dir"):
            value = value if eq else next(it, None)
            if value is None:
                raise ValueError(f"{name}: expected a value")
            if name == "--nproc":
                nproc = int(value)
            else:
                work_dir = value
        elif word == "--smoke":
            smoke = True
        elif key is None and word in EXPERIMENTS:
            key = word
        elif eq and not word.startswith("-") and "." in name:
            overrides.append(word)
        else:
            torchrun_args.append(word)
    return key, work_dir, nproc, smoke, overrides, torchrun_args


def launch_main(tokens: list[str]) -> int:
    try:
        key, work_dir, nproc, smoke, overrides, torchrun_args = _split_launch_args(tokens)
        if work_dir is None:
            raise ValueError("--work-dir: required (the output folder shared by all processes)")
        key = experiment_key(key)
        config = resolve(key, overrides)
    except ValueError as err:
        print(f"mim-fast launch: {err}", file=sys.stderr)
        return 2
    nproc = nproc or config.launch.num_gpus or 1
    cmd = torchrun_command(key, overrides, work_dir, nproc, smoke, torchrun_args, config.launch.num_nodes)
    print(" ".join(cmd), file=sys.stderr)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return subprocess.call(cmd, env=env)
