"""Composite encodings added to tokens (the reference's absolute position mode).

With ``n = int(D * 0.25)`` every token gets an additive encoding of four ``n``-wide parts:

* ``[0, n)``    its band set's channel embedding (learnable, zero-initialised), all modalities;
* ``[n, 2n)``   1-D sincos of its time index (multitemporal modalities only);
* ``[2n, 3n)``  the month encoding of its timestamp (multitemporal modalities only);
* ``[3n, 4n)``  2-D sincos of its grid position scaled by the patch size (spatial only).

The reference's formulas are kept, oddities included: the 1-D sincos frequencies are
``10000^(-k / (2d))`` (not ``2k / d``) and the month code repeats ``sin`` and ``cos`` of one
angle across each half. Encodings are computed per token from small tables and gathered,
so they can be added to packed tokens directly (only the tokens a model keeps).
"""

import math

import torch
from torch import nn

from ..data.modalities import get_modality
from .tokenization import as_tokenization_config

BASE_GSD = 10


def sincos_1d(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """``[L] -> [L, dim]``: ``[sin(pos * w_k) | cos(pos * w_k)]``, ``w_k = 10000^(-k / (2 dim))``, k < dim/2."""
    omega = torch.arange(dim // 2, dtype=torch.float64, device=positions.device) / dim / 2.0
    omega = 1.0 / 10000**omega
    angles = positions.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1).float()


def month_table(dim: int) -> torch.Tensor:
    """``[12, dim]``: row m = ``[sin(2 pi m / 12)] * dim/2 + [cos(2 pi m / 12)] * dim/2``."""
    angles = torch.arange(12, dtype=torch.float32) / 12 * 2 * math.pi
    half = dim // 2
    return torch.cat([torch.sin(angles)[:, None].expand(12, half), torch.cos(angles)[:, None].expand(12, half)], dim=1)


def sincos_2d(rows: torch.Tensor, cols: torch.Tensor, dim: int) -> torch.Tensor:
    """``[L] x [L] -> [L, dim]``: 1-D sincos (width dim/2) of the column, then of the row."""
    return torch.cat([sincos_1d(cols, dim // 2), sincos_1d(rows, dim // 2)], dim=1)


class CompositeEncodings(nn.Module):
    """Additive token encodings; parameters as the reference's ``CompositeEncodings``.

    ``per_modality_channel_embeddings[modality]``: ``[n_band_sets, n]`` (zeros and learnable
    by default; ``random_channel_embeddings`` draws U[0, 1); neither: frozen zeros).
    ``month_embed``: frozen ``nn.Embedding`` holding :func:`month_table`.
    """

    def __init__(
        self,
        embedding_size: int,
        supported_modalities,
        max_sequence_length: int | None = None,
        learnable_channel_embeddings: bool = True,
        random_channel_embeddings: bool = False,
        tokenization_config=None,
    ):
        super().__init__()
        self.embedding_size = embedding_size
        self.n = int(embedding_size * 0.25)
        config = as_tokenization_config(tokenization_config)
        names = [str(getattr(m, "name", m)) for m in supported_modalities]
        self.month_embed = nn.Embedding.from_pretrained(month_table(self.n), freeze=True)
        self.per_modality_channel_embeddings = nn.ParameterDict()
        for name in names:
            shape = (config.get_num_bandsets(name), self.n)
            init = torch.rand(shape) if random_channel_embeddings else torch.zeros(shape)
            self.per_modality_channel_embeddings[name] = nn.Parameter(
                init, requires_grad=learnable_channel_embeddings or random_channel_embeddings
            )

    def encodings(
        self, layout, timestamps: torch.Tensor, patch_size: int, positions: torch.Tensor | None = None,
        input_res: int = BASE_GSD,
    ) -> torch.Tensor:  # fmt: skip
        """Float32 encodings of tokens of a :class:`TokenLayout`.

        Args:
            layout: the global token layout (modality, band set, grid position of each token).
            timestamps: ``[B, T, 3]`` (day, month 0..11, year).
            patch_size, input_res: the spatial part uses positions scaled by
                ``input_res * patch_size / 10``.
            positions: ``[B, L]`` global token positions to encode (e.g. the ``indices`` of
                packed tokens); None encodes every token.

        Returns:
            ``[B, L, D]`` (``[B, N, D]`` when ``positions`` is None).
        """
        device = timestamps.device
        n, batch = self.n, timestamps.shape[0]
        if positions is None:
            positions = torch.arange(layout.num_tokens, device=device).expand(batch, -1)
        codes = layout.codes(device)  # [N, 4]: channel row, time, row, col
        picked = codes[positions]  # [B, L, 4]
        ch, t, row, col = picked.unbind(-1)
        out = torch.zeros(*positions.shape, self.embedding_size, device=device)
        channel = torch.cat([self.per_modality_channel_embeddings[m] for m in layout.modalities], dim=0)
        out[..., :n] = channel[ch]
        timed = (t >= 0)[..., None]
        if layout.max_time > 0:
            t0 = t.clamp_min(0)
            time_code = sincos_1d(torch.arange(layout.max_time, device=device), n)
            out[..., n : 2 * n] = torch.where(timed, time_code[t0], 0.0)
            months = timestamps[:, : layout.max_time, 1].long().gather(1, t0)
            out[..., 2 * n : 3 * n] = torch.where(timed, self.month_embed(months), 0.0)
        if layout.any_spatial:
            scale = input_res * patch_size / BASE_GSD
            code = sincos_2d(row.flatten().clamp_min(0) * scale, col.flatten().clamp_min(0) * scale, n)
            out[..., 3 * n : 4 * n] = torch.where((row >= 0)[..., None], code.view(*positions.shape, n), 0.0)
        return out


def packed_positions(packed) -> torch.Tensor:
    """Global token position of every packed row ``[B, L]`` (0 on rows past the last token:
    with ``max_len`` larger than the number of tokens the packed buffer is wider than N)."""
    length = packed.mask.shape[1]
    positions = packed.indices[:, :length]
    if positions.shape[1] < length:
        positions = torch.nn.functional.pad(positions, (0, length - positions.shape[1]))
    return positions


class TokenLayout:
    """Where every token of a batch's global sequence comes from (host-side, per shape).

    The sequence of a sample is each modality in ``modalities`` order, flattened row-major
    over ``(H', W', T, band set)`` (spatial), ``(T, band set)`` (time-only) or ``(band set)``
    (static) — the reference's flattening order. Per token: ``channel_row`` (row of the
    concatenated channel-embedding tables), ``time`` (-1 when the modality has no time axis),
    ``row`` / ``col`` (-1 when not spatial), and ``modality_index``.
    """

    def __init__(self, grids: dict[str, tuple[int, int, int, int]]):
        """``grids[modality] = (H', W', T, n_band_sets)`` in sequence order."""
        self.modalities = list(grids)
        self.grids = grids
        channel, time, row, col, which = [], [], [], [], []
        offset = 0
        self.offsets = {}
        for k, (name, (h, w, t, sets)) in enumerate(grids.items()):
            spec = get_modality(name)
            self.offsets[name] = sum(len(c) for c in channel)
            ii, jj, tt, ss = torch.meshgrid(
                torch.arange(h), torch.arange(w), torch.arange(t), torch.arange(sets), indexing="ij"
            )
            channel.append(offset + ss.flatten())
            time.append(tt.flatten() if spec.is_multitemporal else torch.full((h * w * t * sets,), -1))
            row.append(ii.flatten() if spec.is_spatial else torch.full((h * w * t * sets,), -1))
            col.append(jj.flatten() if spec.is_spatial else torch.full((h * w * t * sets,), -1))
            which.append(torch.full((h * w * t * sets,), k))
            offset += sets
        self.channel_row = torch.cat(channel)
        self.time = torch.cat(time)
        self.row = torch.cat(row)
        self.col = torch.cat(col)
        self.modality_index = torch.cat(which)
        self.num_tokens = int(self.channel_row.numel())
        self.max_time = int(self.time.max()) + 1 if self.num_tokens and int(self.time.max()) >= 0 else 0
        self.any_spatial = bool((self.row >= 0).any())
        self._codes = torch.stack([self.channel_row, self.time, self.row, self.col], dim=1)
        self._on_device: dict = {}

    def codes(self, device) -> torch.Tensor:
        """``[N, 4]`` int64 (channel row, time, row, col) on ``device`` (cached)."""
        key = str(device)
        if key not in self._on_device:
            self._on_device[key] = self._codes.to(device)
        return self._on_device[key]
