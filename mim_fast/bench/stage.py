"""The tokenization stage of one microbatch of experiment 14, three ways.

Experiment 14 (``single_bandset_all12_random_band_dropout_cross_random_masked_neg``):
single-bandset Sentinel-2 (12 bands) and Landsat (11), Sentinel-1, six static maps;
band dropout with a rate drawn from U(0, 0.3) per (modality, band set) and forward;
``modality_cross_random`` masks; width D = 768. One stage is

* the online path: band dropout, patch embedding of every modality, packing of the
  ONLINE_ENCODER tokens, forward and backward (weight gradients);
* the frozen target path: the DECODER tokens' patch embeddings (no gradient).

Paths:
    ``fused``    ``MultiModalPatchEmbeddings.forward_packed`` (only selected tokens are
                 embedded, no resized image);
    ``eager``    the reference's computation in plain PyTorch: per modality dropout,
                 antialiased bicubic resize of the whole image, linear layer on every
                 token, concatenation, sort-based ``remove_masked_tokens``;
    ``compiled`` ``torch.compile`` of ``eager``.

Masks follow ``modality_cross_random`` (encode 0.5, decode 0.5, allow the same band set
to be encoded and decoded, at least 2 encoded band sets, maps decode-only): step 1 draws
ONLINE_ENCODER / DECODER per token at 50 %, then per sample 2 or 3 of the three encodable
band sets are encoded and a random non-empty subset of all nine is decoded; non-encoded
sets keep only their DECODER tokens, encoded but not decoded sets only their
ONLINE_ENCODER tokens. (The repair step of the reference, which only fires when a sample
has no encoder or no decoder token, is left out.)
"""

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..data import MaskedBatch
from ..data.modalities import get_modality
from ..mask_value import MaskValue
from ..nn import MultiModalPatchEmbeddings
from ..ops.tokenize import release_memory

SHAPES = ((1, 12, 1), (2, 8, 4), (3, 5, 12), (4, 6, 9), (8, 4, 12))
"""(patch size, crop size in tokens hw_p, timesteps T) of the study's sampling table."""

MODALITIES = (
    "sentinel2_l2a", "sentinel1", "landsat", "worldcover", "srtm", "openstreetmap_raster",
    "wri_canopy_height_map", "cdl", "worldcereal",
)  # fmt: skip
DECODE_ONLY = ("worldcover", "srtm", "openstreetmap_raster", "wri_canopy_height_map", "cdl", "worldcereal")
TOKENIZATION = {
    "sentinel2_l2a": [list(get_modality("sentinel2_l2a").band_order)],
    "landsat": [list(get_modality("landsat").band_order)],
}
BASE_PATCH = 8
MAX_BAND_DROPOUT = 0.3


def cross_random_codes(batch: int, grids: dict[str, tuple[int, int, int]], generator: torch.Generator) -> dict:
    """Token-level mask codes ``{modality: [B, h, w, T]}`` (one band set each), as in the module docstring."""
    names = list(grids)
    encodable = [m for m in names if m not in DECODE_ONLY]
    codes = {
        m: torch.where(torch.rand((batch, *grid), generator=generator) < 0.5, MaskValue.ONLINE_ENCODER, MaskValue.DECODER)
        for m, grid in grids.items()
    }
    for b in range(batch):
        n_enc = int(torch.randint(min(2, len(encodable)), len(encodable) + 1, (), generator=generator))
        encoded = {encodable[k] for k in torch.randperm(len(encodable), generator=generator)[:n_enc].tolist()}
        n_dec = int(torch.randint(1, len(names) + 1, (), generator=generator))
        decoded = {names[k] for k in torch.randperm(len(names), generator=generator)[:n_dec].tolist()}
        for m in names:
            c = codes[m][b]
            if m not in encoded:
                c[c == MaskValue.ONLINE_ENCODER] = MaskValue.TARGET_ENCODER_ONLY
            elif m not in decoded:
                c[c == MaskValue.DECODER] = MaskValue.TARGET_ENCODER_ONLY
    return codes


def make_batch(
    batch: int, patch: int, hw_p: int, time: int, *, seed: int = 0, dtype=torch.float32, device="cpu"
) -> MaskedBatch:
    """A synthetic experiment-14 microbatch: data ~ N(0, 1), pixel-level masks (made on CPU, moved to ``device``)."""
    gen = torch.Generator().manual_seed(seed)
    size = hw_p * patch
    grids, fields = {}, {}
    for m in MODALITIES:
        spec = get_modality(m)
        steps = time if spec.is_multitemporal else 1
        grids[m] = (hw_p, hw_p, steps)
        fields[m] = torch.randn(batch, size, size, steps, spec.num_bands, generator=gen, dtype=dtype)
    codes = cross_random_codes(batch, grids, gen)
    for m, c in codes.items():
        fields[f"{m}_mask"] = c.repeat_interleave(patch, 1).repeat_interleave(patch, 2)[..., None]
    fields["timestamps"] = torch.zeros(batch, time, 3, dtype=torch.long)
    return MaskedBatch(**{k: v.to(device) for k, v in fields.items()})


def _band_keep(batch: int, bands: int, device) -> torch.Tensor | None:
    """Reference band dropout: rate ~ U(0, 0.3), keep = U >= rate, one random band forced if none kept."""
    if bands == 1:
        return None
    rate = torch.rand((), device=device) * MAX_BAND_DROPOUT
    keep = torch.rand(batch, bands, device=device) >= rate
    forced = F.one_hot(torch.randint(bands, (batch,), device=device), bands).bool()
    return keep | (forced & ~keep.any(dim=1, keepdim=True))


def _embed_dense(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, patch: int) -> torch.Tensor:
    """Reference patch embedding of every token: resize the image, cut PxP patches, linear."""
    b, height, width, time, c = x.shape
    images = x.permute(0, 3, 4, 1, 2).reshape(b * time, c, height, width)
    h, w = height // patch, width // patch
    if patch != BASE_PATCH:
        # No CPU kernel for low-precision antialiased bicubic: resize in float32 there.
        upcast = images.device.type == "cpu" and images.dtype in (torch.bfloat16, torch.float16)
        resized = F.interpolate(
            images.float() if upcast else images, size=(h * BASE_PATCH, w * BASE_PATCH), mode="bicubic", antialias=True
        )
        images = resized.to(x.dtype)
    patches = images.reshape(b * time, c, h, BASE_PATCH, w, BASE_PATCH).permute(0, 2, 4, 3, 5, 1)
    tokens = F.linear(patches.reshape(b * time, h * w, -1), weight, bias)
    return tokens.reshape(b, time, h, w, -1).permute(0, 2, 3, 1, 4)  # [B, h, w, T, D]


def _remove_masked_tokens(tokens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The reference's sort-based packing (reads the longest length on the host)."""
    sorted_keep, order = torch.sort(keep.int(), dim=1, descending=True, stable=True)
    packed = tokens.gather(1, order[:, :, None].expand_as(tokens)) * sorted_keep[:, :, None]
    return packed[:, : sorted_keep.sum(1).max()]


def eager_tokens(params: dict, batch, patch: int, select: int, dropout: bool) -> torch.Tensor:
    """Packed tokens with code ``select`` via the reference's dense computation.

    ``params[m] = (weight, bias)`` of each modality's single band set.
    """
    tokens, codes = [], []
    for m in MODALITIES:
        x = getattr(batch, m)
        weight, bias = params[m]
        keep = _band_keep(x.shape[0], x.shape[-1], x.device) if dropout else None
        if keep is not None:
            x = x * keep[:, None, None, None, :]
        dense = _embed_dense(x, weight, bias, patch)
        tokens.append(dense.reshape(x.shape[0], -1, dense.shape[-1]))
        codes.append(getattr(batch, f"{m}_mask")[:, ::patch, ::patch, :, 0].reshape(x.shape[0], -1))
    return _remove_masked_tokens(torch.cat(tokens, 1), torch.cat(codes, 1) == select)


@dataclass
class StageCase:
    """One (shape, batch size) case with the callables of every path."""

    patch: int
    hw_p: int
    time: int
    batch_size: int
    paths: dict
    required_flops: float
    online_tokens: int
    target_tokens: int
    total_tokens: int
    input_elements: int = 0
    weight_elements: int = 0
    reset: dict = None
    """Per path: frees what a previous call left behind (gradients, the fused path's caches)."""


def _params(module: MultiModalPatchEmbeddings) -> dict:
    out = {}
    for m in MODALITIES:
        layer = module.per_modality_embeddings[m][f"{m}__0"]
        out[m] = (layer.proj.weight, layer.proj.bias)
    return out


def build_case(
    patch: int,
    hw_p: int,
    time: int,
    batch_size: int,
    *,
    dim: int = 768,
    seed: int = 0,
    device="cpu",
    dtype=torch.float32,
    max_len: int | None = None,
) -> StageCase:
    """Inputs, modules and the fused / eager / compiled callables of one stage case.

    ``max_len`` is passed to the fused path (None: packed length read on the host).
    """
    torch.manual_seed(seed)
    online = MultiModalPatchEmbeddings(
        MODALITIES, BASE_PATCH, dim, tokenization_config=TOKENIZATION,
        band_dropout_rate=MAX_BAND_DROPOUT, random_band_dropout=True,
    ).to(device=device, dtype=dtype)  # fmt: skip
    target = copy.deepcopy(online).requires_grad_(False).eval()
    online.train()
    batch = make_batch(batch_size, patch, hw_p, time, seed=seed, dtype=dtype, device=device)
    online_params, target_params = _params(online), _params(target)

    def fused():
        online.zero_grad(set_to_none=True)
        online.forward_packed(batch, patch, select=MaskValue.ONLINE_ENCODER, max_len=max_len).tokens.sum().backward()
        with torch.no_grad():
            target.forward_packed(batch, patch, select=MaskValue.DECODER, max_len=max_len)

    def eager_step(tokens_fn):
        def run():
            online.zero_grad(set_to_none=True)
            tokens_fn(online_params, batch, patch, MaskValue.ONLINE_ENCODER, True).sum().backward()
            with torch.no_grad():
                tokens_fn(target_params, batch, patch, MaskValue.DECODER, False)

        return run

    # One graph per modality shape (channels, timesteps) and path: allow them all to compile.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    compiled = torch.compile(eager_tokens)

    counts = {"online": 0, "target": 0, "total": 0}
    flops = 0.0
    for m in MODALITIES:
        codes = getattr(batch, f"{m}_mask")[:, ::patch, ::patch, :, 0]
        features = BASE_PATCH * BASE_PATCH * getattr(batch, m).shape[-1]
        n_online = int((codes == MaskValue.ONLINE_ENCODER).sum())
        n_target = int((codes == MaskValue.DECODER).sum())
        counts["online"] += n_online
        counts["target"] += n_target
        counts["total"] += codes.numel()
        # forward + weight gradient for online tokens, forward for targets
        flops += 2.0 * dim * features * (2 * n_online + n_target)
    return StageCase(
        patch, hw_p, time, batch_size,
        {"fused": fused, "eager": eager_step(eager_tokens), "compiled": eager_step(compiled)},
        flops, counts["online"], counts["target"], counts["total"],
        sum(getattr(batch, m).numel() for m in MODALITIES), sum(w.numel() for w, _ in online_params.values()),
        {"fused": lambda: (online.zero_grad(set_to_none=True), release_memory()),
         "eager": lambda: online.zero_grad(set_to_none=True)},
    )  # fmt: skip


def gemm_rate(repeats: int = 11) -> float:
    """FLOP/s of torch.mm on [4096, 768] x [768, 768] fp32 (the machine's GEMM rate here)."""
    from .timing import median_seconds

    a, b = torch.randn(4096, 768), torch.randn(768, 768)
    return 2.0 * 4096 * 768 * 768 / median_seconds(lambda: a @ b, repeats=repeats)


def peak_memory_bytes(fn, reset=None) -> int:
    """Peak of the bytes held by tensors ``fn()`` allocates, above what was allocated before it.

    Read from the profiler's memory events (every CPU tensor allocation and release, in
    order); released memory retained by the C allocator does not hide it, unlike the
    process's resident-set high-water mark. ``fn`` is run once before, to warm up; then
    ``reset()`` (if given) frees what that run left behind: gradients, so that releases of
    memory allocated before the profile cannot lower its baseline, and caches a path keeps
    between calls, so that the profiled call allocates them again and they are counted.
    """
    fn()
    if reset is not None:
        reset()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    held = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        held += event.nbytes()
        peak = max(peak, held)
    return peak


def geometric_mean(values) -> float:
    values = list(values)
    return float(torch.tensor(values, dtype=torch.float64).log().mean().exp()) if values else float("nan")
