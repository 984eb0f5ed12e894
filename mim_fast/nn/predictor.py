"""The decoder: pure cross-attention from DECODER queries to ONLINE_ENCODER context.

As in the reference: every context token is ``encoder_to_decoder_embed(input_norm(latent))``
plus the decoder's own encodings; every query is ``mask_token`` plus its encodings; each
block updates the queries only (the context is not normalised inside the blocks and never
changes); TARGET_ENCODER_ONLY and MISSING tokens take no part. Queries never attend to
each other, so only DECODER tokens are computed here, packed; :meth:`Predictor.forward`
also returns the reference's values at the other positions.
"""

import torch
from torch import nn

from ..mask_value import MaskValue
from ..ops.masked_gather import Packed, masked_gather
from .attention import Block, init_linear_weights
from .encodings import CompositeEncodings, TokenLayout, packed_positions
from .ragged import Ragged
from .tokens import TokensAndMasks


class Predictor(nn.Module):
    """Decoder; arguments and parameter names as the reference's ``Predictor``."""

    def __init__(
        self,
        supported_modalities,
        encoder_embedding_size: int = 128,
        decoder_embedding_size: int = 128,
        depth: int = 2,
        mlp_ratio: float = 2.0,
        num_heads: int = 8,
        max_sequence_length: int = 24,
        drop_path: float = 0.0,
        learnable_channel_embeddings: bool = True,
        random_channel_embeddings: bool = False,
        output_embedding_size: int | None = None,
        use_flash_attn: bool = False,
        qk_norm: bool = False,
        tokenization_config=None,
        position_encoding: str = "absolute",
        **rope_options,
    ):
        super().__init__()
        if position_encoding != "absolute":
            raise NotImplementedError(f"Predictor: position_encoding={position_encoding!r}; only 'absolute' is implemented")
        names = [str(getattr(m, "name", m)) for m in supported_modalities]
        self.supported_modality_names = names
        self.mask_token = nn.Parameter(torch.zeros(decoder_embedding_size))
        self.blocks = nn.ModuleList(
            Block(decoder_embedding_size, num_heads, mlp_ratio, drop_path, cross_attn=True, qk_norm=qk_norm)
            for _ in range(depth)
        )
        self.composite_encodings = CompositeEncodings(
            decoder_embedding_size, names, max_sequence_length, learnable_channel_embeddings,
            random_channel_embeddings, tokenization_config,
        )  # fmt: skip
        self.encoder_to_decoder_embed = nn.Linear(encoder_embedding_size, decoder_embedding_size)
        self.to_output_embed = nn.Linear(decoder_embedding_size, output_embedding_size or encoder_embedding_size)
        self.input_norm = nn.LayerNorm(encoder_embedding_size)
        self.norm = nn.LayerNorm(decoder_embedding_size)
        init_linear_weights(self)

    def context(self, latent: torch.Tensor, positions: torch.Tensor, keep: torch.Tensor, layout, timestamps, patch_size,
                input_res=10) -> torch.Tensor:  # fmt: skip
        """Decoder-width context ``[B, Lc, D']`` from packed encoder outputs ``latent [B, Lc, D]``."""
        enc = self.composite_encodings.encodings(layout, timestamps, patch_size, positions, input_res)
        return self.encoder_to_decoder_embed(self.input_norm(latent)) + enc * keep[..., None]

    def decode_packed(
        self,
        context: torch.Tensor,
        context_mask: torch.Tensor,
        queries: Packed,
        layout: TokenLayout,
        timestamps: torch.Tensor,
        patch_size: int,
        input_res: int = 10,
    ) -> torch.Tensor:
        """Predictions ``[B, Lq, out]`` for the packed DECODER positions ``queries.indices[:, :Lq]``.

        Args:
            context: ``[B, Lc, D']`` from :meth:`context`; ``context_mask [B, Lc]`` its real rows.
            queries: layout of the DECODER tokens (only ``indices`` and ``mask`` are read).
        """
        positions = packed_positions(queries)
        enc = self.composite_encodings.encodings(layout, timestamps, patch_size, positions, input_res)
        x = (self.mask_token + enc) * queries.mask[..., None]
        rows, context_rows = Ragged.of(queries.mask), Ragged.of(context_mask)
        if rows is not None and context_rows is not None:  # CPU: the blocks run on the real rows only
            flat, flat_context = rows.pack(x), context_rows.pack(context)
            for block in self.blocks:
                flat = block(flat, context=flat_context, rows=rows, context_rows=context_rows)
            return rows.unpack(self.to_output_embed(self.norm(flat)))
        for block in self.blocks:
            x = block(x, context=context, key_mask=context_mask)
        return self.to_output_embed(self.norm(x))

    def forward(self, latent, timestamps, patch_size: int, input_res: int = 10) -> TokensAndMasks:
        """Reference-shaped decoder output for a TokensAndMasks-like latent (dense).

        DECODER positions hold the predictions; ONLINE_ENCODER positions the output head
        applied to the context tokens and the other positions the head applied to zeros,
        exactly as the reference computes them (only DECODER positions are meaningful).
        """
        tokens, codes = latent.flatten()
        layout = TokenLayout(
            {m: _grid(getattr(latent, m), getattr(latent, f"{m}_mask")) for m in latent.modalities}
        )
        context = masked_gather(tokens, codes == MaskValue.ONLINE_ENCODER)
        queries = masked_gather(codes.new_zeros(codes.shape)[..., None].float(), codes == MaskValue.DECODER)
        y = self.context(context.tokens, packed_positions(context), context.mask, layout, timestamps, patch_size, input_res)
        pred = self.decode_packed(y, context.mask, queries, layout, timestamps, patch_size, input_res)
        from ..ops.masked_gather import masked_scatter

        head_of_zero = self.to_output_embed(self.norm(torch.zeros_like(self.mask_token)))
        dense = head_of_zero.expand(tokens.shape[0], tokens.shape[1], -1).clone()
        context_out = self.to_output_embed(self.norm(y))
        is_context = (codes == MaskValue.ONLINE_ENCODER)[..., None]
        is_query = (codes == MaskValue.DECODER)[..., None]
        dense = torch.where(is_context, masked_scatter(context_out, context.indices, context.mask), dense)
        dense = torch.where(is_query, masked_scatter(pred, queries.indices, queries.mask), dense)
        fields = {}
        start = 0
        for m in latent.modalities:
            src = getattr(latent, m)
            count = src[..., 0].numel() // src.shape[0]
            fields[m] = dense[:, start : start + count].reshape(*src.shape[:-1], dense.shape[-1])
            fields[f"{m}_mask"] = getattr(latent, f"{m}_mask")
            start += count
        return TokensAndMasks(**fields)


def _grid(tokens: torch.Tensor, mask: torch.Tensor) -> tuple[int, int, int, int]:
    """``(H', W', T, n_sets)`` of one modality's reference-shaped tokens."""
    dims = mask.shape[1:]
    if len(dims) == 4:
        return tuple(dims)
    if len(dims) == 2:
        return (1, 1, dims[0], dims[1])
    return (1, 1, 1, dims[0])
