"""The online encoder: fused tokenizer -> encodings -> transformer on packed tokens -> norm.

Only the ONLINE_ENCODER tokens are ever embedded (``forward_packed``), encoded and
attended; padded key rows are masked in training and in evaluation (the reference attends
to padding in evaluation; fixed here). Parameter names and constructor arguments follow
the reference's ``Encoder`` (absolute position encoding, linear patch embeddings).
"""

import torch
from torch import nn

from ..data.modalities import get_modality
from ..mask_value import MaskValue
from ..ops.masked_gather import masked_scatter
from .attention import Block, init_linear_weights
from .encodings import CompositeEncodings, TokenLayout, packed_positions
from .patch_embed import MultiModalPatchEmbeddings
from .ragged import Ragged
from .tokens import TokensAndMasks


class ProjectAndAggregate(nn.Module):
    """Mean of the ONLINE_ENCODER tokens of a sample, then a projection (``projection.*``).

    ``num_layers == 1``: ``Linear(D, out)``; more: ``Linear(D, D)`` and ReLU repeated, then
    ``Linear(D, out)``. A sample without encoder tokens pools to zeros (the reference
    raises, which needs a host sync).
    """

    def __init__(self, embedding_size: int, num_layers: int = 1, aggregate_then_project: bool = True,
                 output_embedding_size: int | None = None, only_project: bool = False):  # fmt: skip
        super().__init__()
        if not aggregate_then_project or only_project:
            raise NotImplementedError("ProjectAndAggregate: only aggregate_then_project=True is implemented")
        out = output_embedding_size or embedding_size
        layers: list[nn.Module] = []
        for _ in range(num_layers - 1):
            layers += [nn.Linear(embedding_size, embedding_size), nn.ReLU()]
        layers.append(nn.Linear(embedding_size, out))
        self.projection = nn.Sequential(*layers)

    def pool(self, tokens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """``[B, L, D]`` tokens, ``[B, L]`` bool -> projected mean ``[B, out]``."""
        weights = keep.to(tokens.dtype)[..., None]
        mean = (tokens * weights).sum(1) / weights.sum(1).clamp_min(1)
        return self.projection(mean)

    def forward(self, x) -> torch.Tensor:
        """Pooled projection of a TokensAndMasks-like container."""
        tokens, mask = x.flatten()
        return self.pool(tokens, mask == MaskValue.ONLINE_ENCODER)


class Encoder(nn.Module):
    """Online encoder; arguments as the reference's ``Encoder`` (see ``mim_fast.experiments``)."""

    def __init__(
        self,
        embedding_size: int,
        max_patch_size: int,
        min_patch_size: int,
        num_heads: int,
        mlp_ratio: float,
        depth: int,
        drop_path: float,
        supported_modalities,
        max_sequence_length: int,
        num_register_tokens: int = 0,
        learnable_channel_embeddings: bool = True,
        random_channel_embeddings: bool = False,
        num_projection_layers: int = 1,
        aggregate_then_project: bool = True,
        use_flash_attn: bool = False,
        frozen_patch_embeddings: bool = False,
        qk_norm: bool = False,
        log_token_norm_stats: bool = False,
        output_embedding_size: int | None = None,
        tokenization_config=None,
        use_linear_patch_embed: bool = True,
        band_dropout_rate: float = 0.0,
        random_band_dropout: bool = False,
        band_dropout_modalities=None,
        patch_embed_hidden_sizes=None,
        post_proj_hidden_sizes=None,
        position_encoding: str = "absolute",
        **rope_options,
    ):
        super().__init__()
        if num_register_tokens:
            raise NotImplementedError("Encoder: register tokens are not implemented (num_register_tokens must be 0)")
        if position_encoding != "absolute":
            raise NotImplementedError(f"Encoder: position_encoding={position_encoding!r}; only 'absolute' is implemented")
        if output_embedding_size is not None:
            raise NotImplementedError("Encoder: output_embedding_size (embedding projector) is not implemented")
        names = [str(getattr(m, "name", m)) for m in supported_modalities]
        self.supported_modality_names = names
        self.embedding_size = embedding_size
        self.max_patch_size = max_patch_size
        self.min_patch_size = min_patch_size
        self.band_dropout_rate = float(band_dropout_rate)
        self.patch_embeddings = MultiModalPatchEmbeddings(
            names, max_patch_size, embedding_size, tokenization_config=tokenization_config,
            use_linear_patch_embed=use_linear_patch_embed, band_dropout_rate=0.0,
            random_band_dropout=random_band_dropout, band_dropout_modalities=band_dropout_modalities,
            patch_embed_hidden_sizes=patch_embed_hidden_sizes, post_proj_hidden_sizes=post_proj_hidden_sizes,
        )  # fmt: skip
        self.composite_encodings = CompositeEncodings(
            embedding_size, names, max_sequence_length, learnable_channel_embeddings, random_channel_embeddings,
            tokenization_config,
        )  # fmt: skip
        self.blocks = nn.ModuleList(
            Block(embedding_size, num_heads, mlp_ratio, drop_path, cross_attn=False, qk_norm=qk_norm) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embedding_size)
        self.project_and_aggregate = ProjectAndAggregate(embedding_size, num_projection_layers, aggregate_then_project)
        init_linear_weights(self, skip=(self.patch_embeddings,))
        if frozen_patch_embeddings:
            self.patch_embeddings.requires_grad_(False)
        self._layouts: dict = {}

    def enable_band_dropout(self) -> None:
        """Switch on the configured band dropout (the reference does this for the online encoder
        only, after the target was copied)."""
        self.patch_embeddings.band_dropout_rate = self.band_dropout_rate

    def layout(self, sample, patch_size: int) -> TokenLayout:
        """The global token layout of a batch (cached per grid shapes)."""
        grids = self.patch_embeddings.token_grids(sample, patch_size)
        key = tuple(grids.items())
        if key not in self._layouts:
            self._layouts[key] = TokenLayout(grids)
        return self._layouts[key]

    def encode_packed(self, sample, patch_size: int, input_res: int = 10, max_len: int | None = None):
        """Encoder output for the ONLINE_ENCODER tokens only.

        Returns:
            ``(tokens [B, L, D], packed, layout)``: final-normed tokens in packed order,
            the :class:`mim_fast.Packed` layout of the selection (``packed.indices`` are global
            token positions) and the :class:`TokenLayout`.
        """
        packed = self.patch_embeddings.forward_packed(sample, patch_size, MaskValue.ONLINE_ENCODER, max_len)
        layout = self.layout(sample, patch_size)
        positions = packed_positions(packed)
        encodings = self.composite_encodings.encodings(layout, sample.timestamps, patch_size, positions, input_res)
        tokens = packed.tokens + encodings * packed.mask[..., None]
        rows = Ragged.of(packed.mask)
        if rows is not None:  # CPU: the blocks run on the real rows only
            flat = rows.pack(tokens)
            for block in self.blocks:
                flat = block(flat, rows=rows)
            return rows.unpack(self.norm(flat)), packed, layout
        for block in self.blocks:
            tokens = block(tokens, key_mask=packed.mask)
        return self.norm(tokens), packed, layout

    def split(self, dense: torch.Tensor, layout: TokenLayout, masks: dict) -> TokensAndMasks:
        """``[B, N, D]`` in layout order -> per-modality tokens shaped as the reference's."""
        fields = {}
        for name in layout.modalities:
            h, w, t, sets = layout.grids[name]
            start = layout.offsets[name]
            part = dense[:, start : start + h * w * t * sets]
            spec = get_modality(name)
            if spec.is_spatial:
                shape = (h, w, t, sets)
            elif spec.is_multitemporal:
                shape = (t, sets)
            else:
                shape = (sets,)
            fields[name] = part.reshape(dense.shape[0], *shape, dense.shape[-1])
            fields[f"{name}_mask"] = masks[name]
        return TokensAndMasks(**fields)

    def forward(self, x, patch_size: int, input_res: int = 10, token_exit_cfg=None, fast_pass: bool = False) -> dict:
        """``{"tokens_and_masks": TokensAndMasks, "project_aggregated": [B, D]}`` like the reference.

        Non-encoder positions of the tokens are exactly zero. ``token_exit_cfg`` with every
        depth 0 returns the raw patch embeddings of every token (the target path).
        """
        if token_exit_cfg is not None:
            if any(int(v) != 0 for v in token_exit_cfg.values()):
                raise NotImplementedError("Encoder: token_exit_cfg with exit depths > 0 is not implemented")
            per_modality = self.patch_embeddings(x, patch_size)
            out = TokensAndMasks(**per_modality)
            return {"tokens_and_masks": out, "project_aggregated": self.project_and_aggregate(out)}
        tokens, packed, layout = self.encode_packed(x, patch_size, input_res)
        dense = masked_scatter(tokens, packed.indices, packed.mask)
        out = self.split(dense, layout, self.patch_embeddings.token_masks(x, patch_size))
        result = {"tokens_and_masks": out}
        if not fast_pass:
            result["project_aggregated"] = self.project_and_aggregate.pool(tokens, packed.mask)
        return result
