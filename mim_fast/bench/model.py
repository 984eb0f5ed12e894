"""Model-level benchmarks: the masked-negatives loss and a LatentMIM training step.

* loss: ``mim_fast.losses`` (vectorised over samples) against the per-sample loop
  formulation (``mim_fast.reference.losses.masked_negatives_loop``, the reference's
  semantics) at B = 32, nine modalities, ~100 decoder tokens per modality and sample, D = 128;
* training step (forward + backward + loss, one masked view) of the nano / tiny model:
  ``LatentMIM.training_loss`` (fused tokenizer, packed encoder/decoder, DECODER-only
  targets) against the dense path of the same model (per-modality outputs, full target
  embeddings, loss on the reference-shaped containers) and, when the reference package is
  importable, against the reference's own ``LatentMIM`` with the same weights.
"""

from dataclasses import dataclass

import torch

from .. import losses, masking
from ..data import MaskedBatch
from ..experiments import build_model, get_experiment
from ..nn.tokens import TokensAndMasks
from ..reference.losses import masked_negatives_loop
from .stage import make_batch

KEY = "single_bandset_all12_random_band_dropout_cross_random_masked_neg"
MODALITIES = ("sentinel2_l2a", "sentinel1", "landsat", "worldcover", "srtm", "openstreetmap_raster",
              "wri_canopy_height_map", "cdl", "worldcereal")  # fmt: skip


@dataclass
class ModelCase:
    name: str
    paths: dict
    values: dict


def loss_case(batch=32, tokens=200, dim=128, seed=0, backward=False) -> ModelCase:
    """~tokens/2 decoder tokens per modality and sample (every other token DECODER at random);
    with ``backward``, the gradient with respect to the predictions is computed too."""
    g = torch.Generator().manual_seed(seed)
    pred = {m: torch.randn(batch, tokens, dim, generator=g).requires_grad_(backward) for m in MODALITIES}
    target = {m: torch.randn(batch, tokens, dim, generator=g) for m in MODALITIES}
    mask = {m: torch.where(torch.rand(batch, tokens, generator=g) < 0.5, 2, 0) for m in MODALITIES}
    maps = list(MODALITIES[3:])
    loss = losses.build({"type": "modality_patch_discrimination_masked_negatives", "mask_negatives_for_modalities": maps})
    preds = TokensAndMasks(**pred, **{f"{m}_mask": v for m, v in mask.items()})
    targets = TokensAndMasks(**target, **{f"{m}_mask": v for m, v in mask.items()})

    def timed(fn):
        if not backward:
            return fn
        leaves = list(pred.values())

        def forward_backward():
            out = fn()
            torch.autograd.grad(out, leaves)
            return out

        return forward_backward

    paths = {
        "mim_fast": timed(lambda: loss.compute(preds, targets)),
        "loop": timed(lambda: masked_negatives_loop(pred, target, mask, masked_modalities=maps)),
    }
    what = "forward+backward" if backward else "forward"
    return ModelCase(f"masked_negatives {what} B={batch} 9 modalities ~{tokens // 2} decoder tokens D={dim}", paths,
                     {k: float(f().detach()) for k, f in paths.items()})  # fmt: skip


def masked_batch(patch, hw_p, time, batch=8, seed=0):
    exp = get_experiment(KEY)
    data = make_batch(batch, patch, hw_p, time, seed=seed)
    g = torch.Generator().manual_seed(seed)
    ts = torch.stack([torch.randint(1, 29, (batch, time), generator=g), torch.randint(0, 12, (batch, time), generator=g),
                      torch.full((batch, time), 2022)], -1)  # fmt: skip
    raw = {m: getattr(data, m) for m in data.modalities}
    strategy = masking.build(exp.masking, tokenization=exp.tokenization)
    return strategy.apply_mask(MaskedBatch(timestamps=ts, **raw), patch, generator=g)


def step_case(size="nano", patch=4, hw_p=6, time=9, batch=8, seed=0) -> ModelCase:
    torch.manual_seed(seed)
    exp = get_experiment(KEY)
    model = build_model(KEY, size, drop_path=0.0, band_dropout_rate=0.0)
    model.train()
    sample = masked_batch(patch, hw_p, time, batch, seed)
    loss = losses.build(exp.loss)
    exits = {m: 0 for m in exp.modalities}

    def fused():
        model.zero_grad(set_to_none=True)
        out = model.training_loss(sample, patch, loss).loss
        out.backward()
        return out

    def dense():
        model.zero_grad(set_to_none=True)
        _, decoded, _, _, _ = model(sample, patch)
        with torch.no_grad():
            targets = model.target_encoder(sample.unmask(), patch_size=patch, token_exit_cfg=exits)["tokens_and_masks"]
        out = loss.compute(decoded, targets)
        out.backward()
        return out

    paths = {"mim_fast": fused, "dense": dense}
    reference = _reference_step(model, sample, patch, exp, exits)
    if reference is not None:
        paths["reference_package"] = reference
    return ModelCase(f"training step {size} B={batch} p={patch} hw_p={hw_p} T={time}", paths,
                     {k: float(f().detach()) for k, f in paths.items()})  # fmt: skip


def _reference_step(model, sample, patch, exp, exits):
    """The reference package's LatentMIM with the same weights, when importable (else None)."""
    try:
        import warnings

        warnings.filterwarnings("ignore", module="olmoearth_pretrain")
        from olmoearth_pretrain.data.constants import Modality
        from olmoearth_pretrain.datatypes import MaskedOlmoEarthSample
        from olmoearth_pretrain.nn import flexi_vit
        from olmoearth_pretrain.nn.latent_mim import LatentMIM
        from olmoearth_pretrain.nn.tokenization import ModalityTokenization, TokenizationConfig
        from olmoearth_pretrain.train.loss import ModalityPatchDiscriminationMaskedNegatives
    except Exception:  # not installed, or its optional dependencies are missing
        return None
    config = TokenizationConfig(overrides={m: ModalityTokenization(band_groups=g) for m, g in exp.tokenization.items()})
    specs = [Modality.get(m) for m in exp.modalities]
    enc, dec = model.encoder, model.decoder
    heads = enc.blocks[0].attn.num_heads
    encoder = flexi_vit.Encoder(
        embedding_size=enc.embedding_size, max_patch_size=8, min_patch_size=1, num_heads=heads, mlp_ratio=4.0,
        depth=len(enc.blocks), drop_path=0.0, supported_modalities=specs, max_sequence_length=12,
        tokenization_config=config,
    )  # fmt: skip
    decoder = flexi_vit.Predictor(
        supported_modalities=specs, encoder_embedding_size=enc.embedding_size,
        decoder_embedding_size=dec.mask_token.shape[0], depth=len(dec.blocks), mlp_ratio=4.0,
        num_heads=dec.blocks[0].attn.num_heads, max_sequence_length=12, tokenization_config=config,
    )  # fmt: skip
    ref = LatentMIM(encoder, decoder, projection_only_target=True)
    ref.load_state_dict(model.state_dict())
    ref.train()
    ref_sample = MaskedOlmoEarthSample(**sample.as_dict())
    unmasked = ref_sample.unmask()
    cfg = {k: v for k, v in exp.loss.items() if k != "type"}
    loss = ModalityPatchDiscriminationMaskedNegatives(**cfg)

    def step():
        ref.zero_grad(set_to_none=True)
        _, decoded, _, _, _ = ref(ref_sample, patch)
        with torch.no_grad():
            targets = ref.target_encoder(unmasked, patch_size=patch, token_exit_cfg=exits)["tokens_and_masks"]
        out = loss.compute(decoded, targets)
        out.backward()
        return out

    return step
