"""Fully resolved run configuration of an experiment, with dotted overrides.

``resolve(key, overrides)`` gives a :class:`RunConfig` whose sections mirror the reference's
names (``model``, ``masking``, ``loss``, ``contrastive``, ``tokenization``, ``data_loader``,
``trainer``, ``launch``). Overrides are ``section.key=value`` strings (values parsed as JSON
when possible, e.g. ``trainer.max_steps=100``, ``launch.clusters=["a"]``); an unknown key is
an error that lists the valid ones.
"""

import copy
import json
from dataclasses import asdict, dataclass, field, fields, is_dataclass

from ..experiments import get_experiment


@dataclass
class ModelSection:
    size: str = "base"
    drop_path: float = 0.1
    band_dropout_rate: float = 0.0
    random_band_dropout: bool = False
    modalities: list = field(default_factory=list)
    projection_only_target: bool = True


@dataclass
class DataLoaderSection:
    global_batch_size: int = 512
    microbatch_size: int = 32
    token_budget: int = 2250
    sampled_hw_p_list: list = field(default_factory=lambda: list(range(1, 13)))
    min_patch_size: int = 1
    max_patch_size: int = 8
    num_workers: int = 16
    prefetch_factor: int = 4
    seed: int = 3622
    budget_with_tokenization: bool = False
    h5py_dir: str = ""
    num_samples: int = 0


@dataclass
class WandbSection:
    enabled: bool = True
    project: str = "2026_01_15_mrl"
    entity: str = "eai-ai2"
    mode: str = "offline"
    name: str = ""


@dataclass
class CallbacksSection:
    wandb: WandbSection = field(default_factory=WandbSection)


@dataclass
class TrainerSection:
    max_steps: int = 667_200
    lr: float = 1e-4
    weight_decay: float = 0.02
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_steps: int = 8000
    final_lr_fraction: float = 0.1
    max_grad_norm: float = 1.0
    ema_decay: list = field(default_factory=lambda: [1.0, 1.0])
    save_interval: int = 5000
    init_seed: int = 12536
    device: str = "auto"
    autocast_bf16: bool = True
    callbacks: CallbacksSection = field(default_factory=CallbacksSection)


@dataclass
class LaunchSection:
    num_gpus: int = 1
    num_nodes: int = 1
    clusters: list = field(default_factory=list)
    parallelism: str = "ddp"


@dataclass
class RunConfig:
    experiment: str
    model: ModelSection
    masking: dict
    loss: dict
    contrastive: dict
    tokenization: dict
    data_loader: DataLoaderSection
    trainer: TrainerSection
    launch: LaunchSection

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)


def _parse(value: str):
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def _valid_keys(obj, prefix="") -> list[str]:
    out = []
    items = obj.items() if isinstance(obj, dict) else ((f.name, getattr(obj, f.name)) for f in fields(obj))
    for name, value in items:
        path = f"{prefix}{name}"
        if is_dataclass(value):
            out += _valid_keys(value, path + ".")
        else:
            out.append(path)
    return out


def apply_override(config: RunConfig, override: str) -> None:
    """Apply one ``section.key=value`` override in place (ValueError naming the valid keys)."""
    if "=" not in override:
        raise ValueError(f"override {override!r}: expected section.key=value")
    path, raw = override.split("=", 1)
    parts = path.strip().split(".")
    target = config
    for k, part in enumerate(parts):
        last = k == len(parts) - 1
        if isinstance(target, dict):
            if last:
                target[part] = _parse(raw)
                return
            if part not in target:
                break
            target = target[part]
        elif is_dataclass(target) and part in {f.name for f in fields(target)}:
            if last:
                current = getattr(target, part)
                if is_dataclass(current):
                    break
                value = _parse(raw)
                if isinstance(current, bool) and not isinstance(value, bool):
                    raise ValueError(f"override {override!r}: {path} expects true or false")
                if isinstance(current, (int, float)) and not isinstance(current, bool) and isinstance(value, (int, float)):
                    value = type(current)(value)
                setattr(target, part, value)
                return
            target = getattr(target, part)
        else:
            break
    valid = "\n  ".join(_valid_keys(config))
    raise ValueError(f"override {override!r}: unknown key {path!r}. Valid keys:\n  {valid}")


def resolve(key: str, overrides=()) -> RunConfig:
    """The full configuration of experiment ``key`` with the study's shared settings."""
    exp = get_experiment(key)
    config = RunConfig(
        experiment=key,
        model=ModelSection(
            band_dropout_rate=exp.band_dropout_rate, random_band_dropout=exp.random_band_dropout,
            modalities=list(exp.modalities),
        ),  # fmt: skip
        masking=copy.deepcopy(exp.masking),
        loss=exp.loss,
        contrastive=exp.contrastive,
        tokenization=copy.deepcopy(exp.tokenization),
        data_loader=DataLoaderSection(),
        trainer=TrainerSection(),
        launch=LaunchSection(),
    )
    config.trainer.callbacks.wandb.name = key
    for override in overrides:
        apply_override(config, override)
    return config


def smoke(config: RunConfig) -> RunConfig:
    """The settings of the one-CPU smoke run (nano model, small batches, ~40 steps)."""
    for override in (
        "model.size=nano", "data_loader.global_batch_size=8", "data_loader.microbatch_size=8",
        "data_loader.num_workers=0", "data_loader.token_budget=400", "data_loader.sampled_hw_p_list=[4]",
        "data_loader.min_patch_size=2", "data_loader.max_patch_size=2",
        "data_loader.num_samples=64", "trainer.max_steps=40", "trainer.warmup_steps=5", "trainer.lr=0.002",
        "trainer.save_interval=10", "trainer.device=cpu", "trainer.autocast_bf16=false",
        "trainer.callbacks.wandb.mode=offline",
    ):  # fmt: skip
        apply_override(config, override)
    return config
