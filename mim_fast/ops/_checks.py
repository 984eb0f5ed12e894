"""Argument validation shared by the public ops: every error names the offending argument.

Type problems raise ``TypeError``; shape, range and device problems raise ``ValueError``.
"""

import torch

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def tensor(name: str, value) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    return value


def floating(name: str, value) -> torch.Tensor:
    t = tensor(name, value)
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected a float32/float64/float16/bfloat16 tensor, got {t.dtype}")
    return t


def boolean(name: str, value) -> torch.Tensor:
    t = tensor(name, value)
    if t.dtype != torch.bool:
        raise TypeError(f"{name}: expected a torch.bool tensor, got {t.dtype}")
    return t


def int64(name: str, value) -> torch.Tensor:
    t = tensor(name, value)
    if t.dtype != torch.int64:
        raise TypeError(f"{name}: expected a torch.int64 tensor, got {t.dtype}")
    return t


def ndim(name: str, t: torch.Tensor, allowed: tuple[int, ...], layout: str) -> None:
    if t.dim() not in allowed:
        raise ValueError(f"{name}: expected {layout}, got a tensor of shape {list(t.shape)}")


def shape(name: str, t: torch.Tensor, expected: tuple[int, ...], meaning: str) -> None:
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{name}: expected shape {list(expected)} ({meaning}), got {list(t.shape)}")


def integer(name: str, value, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, torch.SymInt):
            return value
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}: must be >= {minimum}, got {value}")
    return value


def same_device(**tensors: torch.Tensor | None) -> torch.device:
    present = {k: v for k, v in tensors.items() if v is not None}
    devices = {k: v.device for k, v in present.items()}
    first_name, first = next(iter(devices.items()))
    for name, device in devices.items():
        if device != first:
            raise ValueError(f"{name}: expected a tensor on {first} (like {first_name}), got one on {device}")
    return first


def same_dtype(**tensors: torch.Tensor | None) -> None:
    present = {k: v for k, v in tensors.items() if v is not None}
    first_name, first = next(iter(present.items()))
    for name, t in present.items():
        if t.dtype != first.dtype:
            raise TypeError(f"{name}: expected dtype {first.dtype} (like {first_name}), got {t.dtype}")
