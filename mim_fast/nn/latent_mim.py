"""LatentMIM: online encoder, decoder, and a frozen target.

The target is, by default, a frozen copy of the online patch embeddings only
(``projection_only_target``): with every token-exit depth 0 (all of the study's runs) and
an EMA decay of 1 (never updated), the reference's full target encoder computes exactly
these projections. :meth:`LatentMIM.training_loss` embeds only the DECODER tokens the
loss uses. ``projection_only_target=False`` keeps a full encoder copy, needed for an EMA
target (``ema_decay < 1``, see :meth:`LatentMIM.update_target`).
"""

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ..mask_value import MaskValue
from ..ops.masked_gather import masked_gather
from .encodings import packed_positions
from .tokens import TokensAndMasks


class FrozenTargetProjection(nn.Module):
    """Frozen copy of an encoder's ``patch_embeddings`` (band dropout off)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.patch_embeddings = copy.deepcopy(encoder.patch_embeddings)
        self.patch_embeddings.band_dropout_rate = 0.0
        self.requires_grad_(False)

    def forward(self, x, patch_size: int, token_exit_cfg=None, **_) -> dict:
        """``{"tokens_and_masks": TokensAndMasks}`` of every token's patch embedding."""
        if token_exit_cfg is not None and any(int(v) != 0 for v in token_exit_cfg.values()):
            raise ValueError("FrozenTargetProjection: token exit depths must be 0 (there are no blocks)")
        return {"tokens_and_masks": TokensAndMasks(**self.patch_embeddings(x, patch_size))}


@dataclass
class ViewLoss:
    """Result of :meth:`LatentMIM.training_loss` for one masked view.

    loss: scalar patch loss; pooled: ``[B, D]`` pooled online representation (for InfoNCE);
    encoded / decoded / targeted: numbers of tokens (0-d tensors, no host read).
    """

    loss: torch.Tensor
    pooled: torch.Tensor
    encoded: torch.Tensor
    decoded: torch.Tensor
    targeted: torch.Tensor


class LatentMIM(nn.Module):
    """Online encoder + decoder + frozen target; forward outputs as the reference's."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, reconstructor=None, projection_only_target: bool = True):
        super().__init__()
        if reconstructor is not None:
            raise NotImplementedError("LatentMIM: a reconstructor is not implemented")
        self.encoder = encoder
        self.decoder = decoder
        self.projection_only_target = projection_only_target
        if projection_only_target:
            self.target_encoder = FrozenTargetProjection(encoder)
        else:
            self.target_encoder = copy.deepcopy(encoder)
            self.target_encoder.patch_embeddings.band_dropout_rate = 0.0
            self.target_encoder.requires_grad_(False)
        self.reconstructor = None

    def forward(self, x, patch_size: int):
        """``(latent, decoded, pooled, reconstructed=None, extra={})`` like the reference."""
        out = self.encoder(x, patch_size=patch_size)
        latent = out["tokens_and_masks"]
        decoded = self.decoder(latent, timestamps=x.timestamps, patch_size=patch_size)
        return latent, decoded, out["project_aggregated"], None, {}

    @torch.no_grad()
    def update_target(self, decay: float) -> None:
        """EMA update ``target <- decay * target + (1 - decay) * online`` (full target only)."""
        if decay >= 1.0:
            return
        if self.projection_only_target:
            raise ValueError("LatentMIM: an EMA target needs projection_only_target=False")
        online = [p for p in self.encoder.parameters()]
        target = [p for p in self.target_encoder.parameters()]
        torch._foreach_lerp_(target, online, 1.0 - decay)

    def _target_patch_embeddings(self):
        return self.target_encoder.patch_embeddings

    def training_loss(self, sample, patch_size: int, loss, max_len: int | None = None) -> ViewLoss:
        """The fast path for one masked view: encoder on ONLINE_ENCODER tokens, decoder on
        DECODER tokens, targets for the DECODER tokens only, and ``loss`` on the packed pairs.

        Equal to the reference's ``forward`` + ``target_encoder(sample.unmask(), exit 0)`` +
        ``loss.compute(decoded, targets)`` when the target's exit depths are 0.

        Args:
            sample: masked batch (reference attribute names).
            patch_size: requested patch size.
            loss: a loss from :func:`mim_fast.losses.build` (uses ``compute_packed``).
            max_len: packed length bound for the encoder (None: read on the host).
        """
        latent, context_packed, layout = self.encoder.encode_packed(sample, patch_size, max_len=max_len)
        pooled = self.encoder.project_and_aggregate.pool(latent, context_packed.mask)
        codes = torch.cat(
            [m.reshape(m.shape[0], -1) for m in self.encoder.patch_embeddings.token_masks(sample, patch_size).values()],
            dim=1,
        )
        queries = masked_gather(codes.new_zeros(codes.shape + (1,), dtype=latent.dtype), codes == MaskValue.DECODER)
        context = self.decoder.context(
            latent, packed_positions(context_packed), context_packed.mask, layout, sample.timestamps, patch_size
        )
        pred = self.decoder.decode_packed(context, context_packed.mask, queries, layout, sample.timestamps, patch_size)
        with torch.no_grad():
            target = self._target_patch_embeddings().forward_packed(sample, patch_size, select=MaskValue.DECODER)
        group = layout.modality_index.to(codes.device)[packed_positions(queries)]
        # The loss runs in float32 outside autocast, as the reference's: under bf16 the
        # near-identical-target test (cosine > 0.999) could never fire.
        with torch.autocast(pred.device.type, enabled=False):
            value = loss.compute_packed(
                pred.float(), target.tokens.float(), queries.mask, group, [str(m) for m in layout.modalities]
            )
        return ViewLoss(
            value, pooled, context_packed.seqlens.sum(), queries.seqlens.sum(), target.seqlens.sum()
        )
