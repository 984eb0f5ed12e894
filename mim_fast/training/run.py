"""Entry points behind ``mim-fast list / dry_run / train``."""

import json
import os
import sys

from ..experiments import DEFAULT_EXPERIMENT, EXPERIMENTS
from .config import resolve, smoke


def experiment_key(key: str | None) -> str:
    """The key given, else the ``EXPERIMENT`` environment variable, else the study's default."""
    key = key or os.environ.get("EXPERIMENT") or DEFAULT_EXPERIMENT
    if key not in EXPERIMENTS:
        raise ValueError(f"experiment: unknown key {key!r}; run `mim-fast list` for the valid keys")
    return key


def _cluster_note(config) -> None:
    if config.launch.clusters:
        print(
            f"note: launch.clusters={config.launch.clusters} is accepted for compatibility, but cluster submission "
            "is out of scope here; run on a machine with `mim-fast launch KEY --nproc N` (torchrun) instead.",
            file=sys.stderr,
        )


def list_main() -> int:
    for key, exp in EXPERIMENTS.items():
        extra = f" +{','.join(exp.extra_modalities)}" if exp.extra_modalities else ""
        rate = f" band_dropout={exp.band_dropout_rate}{' random' if exp.random_band_dropout else ''}" if exp.band_dropout_rate else ""
        print(f"{key}\n    masking={exp.masking['type']}{rate}{extra}")
    return 0


def dry_run_main(key: str | None, overrides, as_json: bool, is_smoke: bool) -> int:
    config = resolve(experiment_key(key), overrides)
    if is_smoke:
        config = smoke(config)
    _cluster_note(config)
    if as_json:
        print(config.to_json())
    else:
        _print_tree(config.to_dict())
    return 0


def _print_tree(value, indent=0) -> None:
    for k, v in value.items():
        if isinstance(v, dict) and v:
            print(" " * indent + f"{k}:")
            _print_tree(v, indent + 2)
        else:
            print(" " * indent + f"{k}: {json.dumps(v)}")


def data_directory(config, work_dir: str, is_smoke: bool) -> str:
    """The H5 folder: ``data_loader.h5py_dir`` if set, else synthetic data generated into the work dir."""
    if config.data_loader.h5py_dir:
        return config.data_loader.h5py_dir
    from ..data.synthetic import generate

    directory = os.path.join(work_dir, "data")
    if not os.path.exists(os.path.join(directory, "synthetic.json")):
        n = config.data_loader.num_samples or max(config.data_loader.global_batch_size * 4, 32)
        print(f"generating {n} synthetic samples into {directory}", file=sys.stderr)
        generate(directory, n, config.model.modalities, tile=32 if is_smoke else 64, seed=config.data_loader.seed)
    return directory


def train_main(key: str | None, overrides, work_dir: str, is_smoke: bool, rank: int = 0, world_size: int = 1) -> int:
    from .trainer import Trainer

    config = resolve(experiment_key(key), [])
    if is_smoke:
        config = smoke(config)
    for override in overrides:
        from .config import apply_override

        apply_override(config, override)
    _cluster_note(config)
    os.makedirs(work_dir, exist_ok=True)
    if rank == 0:
        data = data_directory(config, work_dir, is_smoke)
    if world_size > 1:
        import torch.distributed as dist

        dist.barrier()
        data = data_directory(config, work_dir, is_smoke)
    trainer = Trainer(config, work_dir, data, rank=rank, world_size=world_size)
    last = trainer.fit()
    if rank == 0 and last:
        print(json.dumps({"final_step": last["step"], "final_loss": last["loss"]}))
    return 0
