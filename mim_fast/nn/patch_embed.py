"""Patch-embedding modules, drop-in for the reference's linear patch path.

:class:`FlexiPatchEmbed` embeds one band set of one modality at any patch size;
:class:`MultiModalPatchEmbeddings` holds one per (modality, band set) and either returns
the reference's per-modality dict (:meth:`~MultiModalPatchEmbeddings.forward`) or packs
the tokens with one mask code of every modality straight into one sequence per sample
(:meth:`~MultiModalPatchEmbeddings.forward_packed`, the fused path). Constructor
arguments and state_dict keys match the reference classes of the same names.
"""

import torch
from torch import nn

from ..data.modalities import get_modality
from ..mask_value import MaskValue
from ..ops.band_dropout import band_dropout_mask
from ..ops.masked_gather import Packed
from ..ops.patch_embed import patch_embed
from ..ops.tokenize import TokenEntry, tokenize_entries
from .tokenization import as_tokenization_config


def _unsupported(message: str):
    raise NotImplementedError(f"{message}; mim_fast implements the linear patch path without pixel MLPs")


class FlexiPatchEmbed(nn.Module):
    """Linear patch embedding at a flexible patch size.

    The base patch size is ``P = base_patch_size_at_16 * image_tile_size_factor``; a
    requested patch size ``q`` (times the same factor) different from P resizes the image
    with antialiased bicubic interpolation to ``(H // q * P, W // q * P)`` first (in the
    fused tokenizer without materialising it). ``proj`` is ``Linear(P*P*in_chans,
    embedding_size)`` over patches flattened in ``(row, column, channel)`` order.

    Args mirror the reference; only the linear path is implemented
    (``use_linear_patch_embed=True``, no hidden sizes, bicubic with antialias).
    ``modality_spec`` may be a name, a :class:`mim_fast.data.modalities.ModalitySpec` or
    the reference's spec.
    """

    def __init__(
        self,
        modality_spec,
        base_patch_size_at_16: int,
        in_chans: int = 3,
        embedding_size: int = 128,
        norm_layer=None,
        bias: bool = True,
        interpolation: str = "bicubic",
        antialias: bool = True,
        use_linear_patch_embed: bool = True,
        patch_embed_hidden_sizes=None,
        post_proj_hidden_sizes=None,
    ):
        super().__init__()
        if not use_linear_patch_embed:
            _unsupported(
                "use_linear_patch_embed=False (Conv2d): load Conv2d checkpoints with "
                "mim_fast.compat.load_olmoearth_state_dict, which converts them"
            )
        if patch_embed_hidden_sizes or post_proj_hidden_sizes:
            _unsupported("patch_embed_hidden_sizes / post_proj_hidden_sizes")
        if norm_layer is not None:
            _unsupported("norm_layer")
        if interpolation != "bicubic" or not antialias:
            _unsupported(f"interpolation={interpolation!r}, antialias={antialias}: only antialiased bicubic")
        spec = get_modality(modality_spec)
        self.modality_spec = spec
        self.tile_factor = spec.image_tile_size_factor
        self.patch_size = base_patch_size_at_16 * self.tile_factor
        self.in_chans = in_chans
        self.embedding_size = embedding_size
        self.proj = nn.Linear(in_chans * self.patch_size * self.patch_size, embedding_size, bias=bias)
        self.norm = nn.Identity()

    def requested(self, patch_size: int | None) -> int:
        """Patch size in pixels for a requested patch size (None: the base size)."""
        return self.patch_size if not patch_size else patch_size * self.tile_factor

    def forward(self, x: torch.Tensor, patch_size: int | None = None, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Embed ``x [B, H, W, C]`` or ``[B, H, W, T, C]`` -> ``[B, H//q, W//q, (T,) D]``.

        ``keep [B, C]`` optionally zeroes dropped bands first (band dropout).
        """
        return patch_embed(
            x, self.proj.weight, self.proj.bias, patch_size=self.requested(patch_size),
            base_patch_size=self.patch_size, keep=keep,
        )  # fmt: skip


class MultiModalPatchEmbeddings(nn.Module):
    """One patch embedding per (modality, band set); the reference's module layout.

    ``per_modality_embeddings[modality][f"{modality}__{idx}"]`` is a :class:`FlexiPatchEmbed`
    (spatial modality) or an ``nn.Linear`` (non-spatial, e.g. ``era5_10``); the band
    indices of band set ``idx`` are the non-persistent buffer ``f"{modality}__{idx}_buffer"``.

    Band dropout (training mode only, ``band_dropout_rate > 0``, modality in
    ``band_dropout_modalities`` or that is None, band set with more than one band): every
    forward draws, for every (modality, band set) separately, a rate (``band_dropout_rate``,
    or ``U(0, 1) * band_dropout_rate`` with ``random_band_dropout``) and a per-sample band
    mask (:func:`mim_fast.band_dropout_mask`). Both are drawn on the data's device: no host
    synchronisation (the reference reads the random rate on the host).

    Modalities are processed in the batch's ``modalities`` order (the reference iterates a
    set, whose order can change between runs; the fixed order is a deliberate fix).
    """

    def __init__(
        self,
        supported_modality_names,
        max_patch_size: int,
        embedding_size: int,
        tokenization_config=None,
        use_linear_patch_embed: bool = True,
        band_dropout_rate: float = 0.0,
        random_band_dropout: bool = False,
        band_dropout_modalities=None,
        patch_embed_hidden_sizes=None,
        post_proj_hidden_sizes=None,
    ):
        super().__init__()
        if not 0.0 <= float(band_dropout_rate) <= 1.0:
            raise ValueError(f"band_dropout_rate: must be in [0, 1], got {band_dropout_rate}")
        self.supported_modality_names = [str(getattr(m, "name", m)) for m in supported_modality_names]
        self.max_patch_size = max_patch_size
        self.embedding_size = embedding_size
        self.tokenization_config = as_tokenization_config(tokenization_config)
        self.band_dropout_rate = float(band_dropout_rate)
        self.random_band_dropout = bool(random_band_dropout)
        self.band_dropout_modalities = None if band_dropout_modalities is None else list(band_dropout_modalities)
        self.per_modality_embeddings = nn.ModuleDict()
        self._band_sets: dict[str, list[list[int]]] = {}
        for name in self.supported_modality_names:
            spec = get_modality(name)
            groups = self.tokenization_config.get_bandset_indices(name)
            self._band_sets[name] = groups
            layers = nn.ModuleDict()
            for idx, bands in enumerate(groups):
                if spec.is_spatial:
                    layers[f"{name}__{idx}"] = FlexiPatchEmbed(
                        spec, max_patch_size, in_chans=len(bands), embedding_size=embedding_size,
                        use_linear_patch_embed=use_linear_patch_embed,
                        patch_embed_hidden_sizes=patch_embed_hidden_sizes, post_proj_hidden_sizes=post_proj_hidden_sizes,
                    )  # fmt: skip
                else:
                    layers[f"{name}__{idx}"] = nn.Linear(len(bands), embedding_size)
                self.register_buffer(f"{name}__{idx}_buffer", torch.tensor(bands, dtype=torch.long), persistent=False)
            self.per_modality_embeddings[name] = layers

    # -- helpers -------------------------------------------------------------------------

    def _modalities(self, sample) -> list[str]:
        present = [str(m) for m in sample.modalities]
        return [m for m in present if m in self.per_modality_embeddings]

    def _layer(self, modality: str, idx: int) -> nn.Module:
        return self.per_modality_embeddings[modality][f"{modality}__{idx}"]

    def _bands(self, data: torch.Tensor, modality: str, idx: int) -> torch.Tensor:
        """The band set's channels of ``data`` (no copy when they are all channels in order)."""
        bands = self._band_sets[modality][idx]
        if bands == list(range(data.shape[-1])):
            return data
        return data.index_select(-1, getattr(self, f"{modality}__{idx}_buffer"))

    def _drops_bands(self, modality: str, num_bands: int) -> bool:
        return (
            self.training
            and self.band_dropout_rate > 0
            and num_bands > 1
            and (self.band_dropout_modalities is None or modality in self.band_dropout_modalities)
        )

    def _band_keep(self, data: torch.Tensor, modality: str, idx: int, generator) -> torch.Tensor | None:
        num_bands = len(self._band_sets[modality][idx])
        if not self._drops_bands(modality, num_bands):
            return None
        rate = self.band_dropout_rate
        if self.random_band_dropout:
            rate = torch.rand((), device=data.device, generator=generator) * rate
        return band_dropout_mask(data.shape[0], num_bands, rate, generator=generator, device=data.device)

    def _token_grid(self, modality: str, data: torch.Tensor, patch_size: int):
        """(x5 [B, H, W, T, C] view, requested q, base P) of a modality's data."""
        spec = get_modality(modality)
        if spec.is_spatial:
            if data.dim() != 5:
                raise ValueError(f"{modality}: expected [B, H, W, T, C] data, got shape {list(data.shape)}")
            layer = self._layer(modality, 0)
            return data, layer.requested(patch_size), layer.patch_size
        if data.dim() == 3:  # time-only [B, T, C]
            return data[:, None, None], 1, 1
        if data.dim() == 2:  # static [B, C]
            return data[:, None, None, None], 1, 1
        raise ValueError(f"{modality}: expected [B, T, C] or [B, C] data, got shape {list(data.shape)}")

    def token_grids(self, sample, patch_size: int) -> dict[str, tuple[int, int, int, int]]:
        """``{modality: (H', W', T, n_band_sets)}`` of the supported modalities of ``sample``,
        in packing order (time-only: ``(1, 1, T, n)``, static: ``(1, 1, 1, n)``)."""
        grids = {}
        for modality in self._modalities(sample):
            x5, q, _ = self._token_grid(modality, getattr(sample, modality), patch_size)
            grids[modality] = (x5.shape[1] // q, x5.shape[2] // q, x5.shape[3], len(self._band_sets[modality]))
        return grids

    def token_masks(self, sample, patch_size: int) -> dict[str, torch.Tensor]:
        """Token-level mask codes ``{modality: mask}`` shaped like the reference's token masks."""
        out = {}
        for modality in self._modalities(sample):
            data, mask = getattr(sample, modality), getattr(sample, f"{modality}_mask")
            if get_modality(modality).is_spatial:
                x5, q, _ = self._token_grid(modality, data, patch_size)
                # The code of a token is the code of its top-left pixel (as the reference reads it).
                out[modality] = mask[:, ::q, ::q][:, : x5.shape[1] // q, : x5.shape[2] // q]
            else:
                out[modality] = mask
        return out

    # -- forward paths ---------------------------------------------------------------------

    def forward(self, input_data, patch_size: int, generator: torch.Generator | None = None) -> dict:
        """Per-modality tokens and token masks, as the reference returns them.

        Returns:
            ``{modality: tokens, modality + "_mask": mask}`` with tokens
            ``[B, H', W', T, n_band_sets, D]`` (spatial; T = 1 for static maps),
            ``[B, T, n_band_sets, D]`` (time-only) or ``[B, n_band_sets, D]`` (static), and
            masks of the same shape without ``D``.
        """
        out = {}
        masks = self.token_masks(input_data, patch_size)
        for modality in self._modalities(input_data):
            data = getattr(input_data, modality)
            spec = get_modality(modality)
            tokens = []
            for idx in range(len(self._band_sets[modality])):
                x = self._bands(data, modality, idx)
                keep = self._band_keep(x, modality, idx, generator)
                layer = self._layer(modality, idx)
                if spec.is_spatial:
                    tokens.append(layer(x, patch_size, keep=keep))
                else:
                    if keep is not None:
                        x = x * keep.reshape(keep.shape[0], *([1] * (x.dim() - 2)), keep.shape[1]).to(x.dtype)
                    tokens.append(layer(x))
            out[modality] = torch.stack(tokens, dim=-2)
            out[f"{modality}_mask"] = masks[modality]
        return out

    def forward_packed(
        self,
        sample,
        patch_size: int,
        select: int = MaskValue.ONLINE_ENCODER,
        max_len: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Packed:
        """Tokens with mask code ``select`` of every modality and band set, packed per sample.

        The sequence of a sample is every modality in ``sample.modalities`` order, each
        flattened row-major over ``(H', W', T, band set)`` — exactly the reference's patch
        embeddings -> concatenation -> ``remove_masked_tokens`` — but only the selected tokens
        are embedded (fused tokenizer, no resized images).

        Args:
            sample: batch with ``.modalities``, ``.<modality>`` and pixel-level
                ``.<modality>_mask`` (e.g. the reference's ``MaskedOlmoEarthSample``).
            patch_size: requested patch size.
            select: mask code to pack (``MaskValue.ONLINE_ENCODER`` for the online encoder,
                ``MaskValue.DECODER`` for the targets the loss uses).
            max_len: packed length (None: the longest sample, one host read).
            generator: generator for band dropout (training mode).

        Returns:
            :class:`mim_fast.Packed` ``(tokens [B, L, D], indices [B, N], mask [B, L],
            seqlens [B])`` over the N tokens of all modalities.
        """
        entries, codes, offset = [], [], 0
        masks = self.token_masks(sample, patch_size)
        for modality in self._modalities(sample):
            data = getattr(sample, modality)
            spec = get_modality(modality)
            x5, q, base = self._token_grid(modality, data, patch_size)
            grid = (x5.shape[1] // q, x5.shape[2] // q, x5.shape[3])
            mask = masks[modality]  # flattened below in (H', W', T, band set) order, as the tokens
            n_sets = len(self._band_sets[modality])
            for idx in range(n_sets):
                x = self._bands(x5, modality, idx)
                keep = self._band_keep(x, modality, idx, generator)
                layer = self._layer(modality, idx)
                weight, bias = (layer.proj.weight, layer.proj.bias) if spec.is_spatial else (layer.weight, layer.bias)
                entries.append(TokenEntry(x, weight, bias, keep, q, base, offset + idx, n_sets))
            codes.append(mask.reshape(mask.shape[0], -1))
            offset += grid[0] * grid[1] * grid[2] * n_sets
        if not entries:
            raise ValueError(
                f"sample: none of its modalities {list(sample.modalities)} is supported by this module "
                f"({self.supported_modality_names})"
            )
        return tokenize_entries(entries, torch.cat(codes, dim=1), int(select), max_len)
