"""Benchmark cases at the study's shapes: each op through mim_fast vs the reference path.

A case holds ready-to-call providers on fixed inputs:
    ``mim_fast``   the public op (backend chosen per device: ``cpp`` on CPU, ``triton`` on CUDA)
    ``reference``  the pure-PyTorch reference formulation (eager)
    plus, where it gives a ceiling, a hardware baseline (``matmul`` for the same-size GEMM,
    ``copy`` for a plain copy of the same input).
``work`` holds the FLOPs or bytes the op must do, to turn times into rates.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .. import ops, reference

# Study shapes: batch 32, Sentinel-2 with 12 bands, base width 768, base patch 8.
BATCH, BANDS, WIDTH, BASE_PATCH = 32, 12, 768, 8


@dataclass
class Case:
    op: str
    shape: str
    providers: dict[str, Callable[[], object]]
    flops: float = 0.0
    bytes: float = 0.0
    baseline: str | None = None  # provider name giving the hardware ceiling
    meta: dict = field(default_factory=dict)


def _name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}[dtype]


def _gen(device, seed=0):
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def band_dropout_apply_case(device="cpu", batch=BATCH, size=64, time=4, bands=BANDS, rate=0.3, dtype=torch.float32) -> Case:
    g = _gen(device)
    x = torch.randn(batch, size, size, time, bands, generator=g, device=device).to(dtype)
    keep = ops.band_dropout_mask(batch, bands, rate, generator=g, device=device)
    return Case(
        "band_dropout_apply",
        f"x[{batch},{size},{size},{time},{bands}] {_name(dtype)}",
        {
            "mim_fast": lambda: ops.band_dropout_apply(x, keep),
            "reference": lambda: x * keep[:, None, None, None, :],
            "copy": lambda: x.clone(),
        },
        bytes=2 * x.numel() * x.element_size(),
        baseline="copy",
    )


def band_dropout_mask_case(device="cpu", batch=BATCH, bands=BANDS, rate=0.3) -> Case:
    g_fast, g_ref = _gen(device, 1), _gen(device, 1)

    def reference_mask():
        seed = torch.randint(0, 2**62, (1,), generator=g_ref, device=device)
        return reference.band_dropout_mask(seed, torch.tensor(rate, device=device), batch, bands)

    return Case(
        "band_dropout_mask",
        f"B={batch} C={bands}",
        {
            "mim_fast": lambda: ops.band_dropout_mask(batch, bands, rate, generator=g_fast, device=device),
            "reference": reference_mask,
        },
    )


def patch_embed_case(
    patch: int, device="cpu", batch=BATCH, tokens_per_side=8, time=1, bands=BANDS, width=WIDTH, dtype=torch.float32
) -> Case:
    g = _gen(device)
    size = tokens_per_side * patch
    x = torch.randn(batch, size, size, time, bands, generator=g, device=device).to(dtype)
    features = BASE_PATCH * BASE_PATCH * bands
    weight = (torch.randn(width, features, generator=g, device=device) / features**0.5).to(dtype)
    bias = torch.randn(width, generator=g, device=device).to(dtype)
    rows = batch * tokens_per_side * tokens_per_side * time
    providers = {
        "mim_fast": lambda: ops.patch_embed(x, weight, bias, patch_size=patch),
        "reference": lambda: reference.patch_embed(x, weight, bias, patch_size=patch),
    }
    baseline = None
    if patch == BASE_PATCH:
        a = torch.randn(rows, features, generator=g, device=device).to(dtype)
        weight_t = weight.t().contiguous()
        providers["matmul"] = lambda: torch.matmul(a, weight_t)
        baseline = "matmul"
    return Case(
        "patch_embed",
        f"p={patch} x[{batch},{size},{size},{time},{bands}] D={width} {_name(dtype)}",
        providers,
        flops=2.0 * rows * features * width,
        baseline=baseline,
        meta={"patch": patch},
    )


def patch_embed_train_case(patch: int, device="cpu", batch=BATCH, tokens_per_side=8, bands=BANDS, width=WIDTH, dtype=torch.float32) -> Case:
    """Forward + backward (gradients for weight and bias; pixels are data, not parameters)."""
    g = _gen(device)
    size = tokens_per_side * patch
    x = torch.randn(batch, size, size, 1, bands, generator=g, device=device).to(dtype)
    features = BASE_PATCH * BASE_PATCH * bands
    weight = (torch.randn(width, features, generator=g, device=device) / features**0.5).to(dtype).requires_grad_(True)
    bias = torch.zeros(width, device=device, dtype=dtype, requires_grad=True)
    grad = torch.randn(batch, tokens_per_side, tokens_per_side, 1, width, generator=g, device=device).to(dtype)
    rows = batch * tokens_per_side * tokens_per_side

    def step(embed):
        def run():
            weight.grad = bias.grad = None
            embed(x, weight, bias, patch_size=patch).backward(grad)

        return run

    return Case(
        "patch_embed_fwd_bwd",
        f"p={patch} x[{batch},{size},{size},1,{bands}] D={width} {_name(dtype)}",
        {"mim_fast": step(ops.patch_embed), "reference": step(reference.patch_embed)},
        flops=2.0 * 2.0 * rows * features * width,
        meta={"patch": patch},
    )


def masked_gather_case(device="cpu", batch=BATCH, tokens=2000, width=WIDTH, keep_fraction=0.5, dtype=torch.float32) -> Case:
    g = _gen(device)
    x = torch.randn(batch, tokens, width, generator=g, device=device).to(dtype)
    keep = torch.rand(batch, tokens, generator=g, device=device) < keep_fraction
    kept = int(keep.sum())
    longest = int(keep.sum(1).max())
    return Case(
        "masked_gather",
        f"x[{batch},{tokens},{width}] keep={keep_fraction} {_name(dtype)}",
        {
            "mim_fast": lambda: ops.masked_gather(x, keep, max_len=longest),
            "reference": lambda: reference.remove_masked_tokens(x, keep),
        },
        bytes=2.0 * kept * width * x.element_size(),
    )


def masked_scatter_case(device="cpu", batch=BATCH, tokens=2000, width=WIDTH, keep_fraction=0.5, dtype=torch.float32) -> Case:
    g = _gen(device)
    x = torch.randn(batch, tokens, width, generator=g, device=device).to(dtype)
    keep = torch.rand(batch, tokens, generator=g, device=device) < keep_fraction
    packed = ops.masked_gather(x, keep)
    return Case(
        "masked_scatter",
        f"x[{batch},{tokens},{width}] keep={keep_fraction} {_name(dtype)}",
        {
            "mim_fast": lambda: ops.masked_scatter(packed.tokens, packed.indices, packed.mask),
            "reference": lambda: reference.add_removed_tokens(packed.tokens, packed.indices, packed.mask),
        },
        bytes=(int(keep.sum()) + batch * tokens) * width * x.element_size(),
    )


def all_cases(device="cpu", quick: bool = False, dtype=torch.float32) -> list[Callable[[], Case]]:
    """Case builders (built lazily so only one case's inputs are alive at a time)."""
    patches = (2, 4, 8) if quick else tuple(range(1, BASE_PATCH + 1))
    builders = [
        lambda: band_dropout_mask_case(device),
        lambda: band_dropout_apply_case(device, dtype=dtype),
        *[(lambda p=p: patch_embed_case(p, device, dtype=dtype)) for p in patches],
        lambda: patch_embed_train_case(BASE_PATCH, device, dtype=dtype),
        lambda: masked_gather_case(device, dtype=dtype),
        lambda: masked_scatter_case(device, dtype=dtype),
    ]
    return builders
