"""Transformer blocks on padded token batches (parameter names as the reference's).

Tokens are ``[B, L, D]`` with a key mask ``[B, L]`` (True = real token). Attention goes
through ``F.scaled_dot_product_attention`` with the key mask broadcast as ``[B, 1, 1, L]``;
no ``[B, H, N, N]`` mask is built. Padded query rows compute values that callers discard.

With ``rows`` (a :class:`mim_fast.nn.ragged.Ragged`) the modules run the same computation
on the flat real rows of a batch: the CPU path of the encoder and decoder.
"""

import torch
import torch.nn.functional as F
from torch import nn

from .ragged import Ragged


class Attention(nn.Module):
    """Multi-head attention with separate ``q``, ``k``, ``v`` and ``proj`` linears.

    Self-attention when ``context`` is None; cross-attention (queries from ``x``, keys and
    values from ``context``, which is not normalised here) otherwise.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, qk_norm: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"num_heads: {num_heads} does not divide the width {dim}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim, dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, key_mask: torch.Tensor | None = None,
                rows: Ragged | None = None, context_rows: Ragged | None = None) -> torch.Tensor:  # fmt: skip
        """``x [B, Lq, D]``, ``context [B, Lk, D]`` or None, ``key_mask [B, Lk]`` bool -> ``[B, Lq, D]``;
        with ``rows``, flat real rows instead (see :meth:`forward_ragged`)."""
        if rows is not None:
            return self.forward_ragged(x, rows, context, context_rows)
        source = x if context is None else context
        q = self.q_norm(self._heads(self.q(x)))
        k = self.k_norm(self._heads(self.k(source)))
        v = self._heads(self.v(source))
        mask = None if key_mask is None else key_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        b, _, n, _ = out.shape
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))

    def forward_ragged(self, x: torch.Tensor, rows: Ragged, context: torch.Tensor | None = None,
                       context_rows: Ragged | None = None) -> torch.Tensor:  # fmt: skip
        """``forward`` on flat real rows: ``x [Tq, D]`` (layout ``rows``), ``context [Tk, D]``
        (layout ``context_rows``) or None for self-attention -> ``[Tq, D]``.

        Each group of samples with equal (query, key) lengths runs one unmasked SDPA; query
        rows of a sample without keys are zero.
        """
        source, keys = (x, rows) if context is None else (context, context_rows)
        grouped = rows.grouped_with(keys)
        q, k, v = self.q(x), self.k(source), self.v(source)
        if grouped.q_order is not None:
            q = q.index_select(0, grouped.q_order)
        if grouped.k_order is not None:
            k, v = k.index_select(0, grouped.k_order), v.index_select(0, grouped.k_order)
        parts = []
        for g in grouped.groups:
            qg = q[g.q_start : g.q_start + g.count * g.queries]
            if g.keys == 0:
                parts.append(torch.zeros_like(qg))
                continue
            kg = k[g.k_start : g.k_start + g.count * g.keys]
            vg = v[g.k_start : g.k_start + g.count * g.keys]
            qh = self.q_norm(qg.view(g.count, g.queries, self.num_heads, self.head_dim).transpose(1, 2))
            kh = self.k_norm(kg.view(g.count, g.keys, self.num_heads, self.head_dim).transpose(1, 2))
            vh = vg.view(g.count, g.keys, self.num_heads, self.head_dim).transpose(1, 2)
            out = F.scaled_dot_product_attention(qh, kh, vh)
            parts.append(out.transpose(1, 2).reshape(g.count * g.queries, -1))
        if not parts:  # no sample has a query row
            return self.proj(q)
        out = parts[0] if len(parts) == 1 else torch.cat(parts)
        if grouped.q_restore is not None:
            out = out.index_select(0, grouped.q_restore)
        return self.proj(out)


class Mlp(nn.Module):
    """``fc2(GELU(fc1(x)))`` with hidden width ``dim * mlp_ratio``."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class DropPath(nn.Module):
    """Per-sample stochastic depth: keeps a residual branch with probability ``1 - p``, rescaled."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x, rows: Ragged | None = None):
        """``x [B, ...]``, or flat rows ``x [T, D]`` of the samples of ``rows``."""
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        if rows is None:
            shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        else:  # one draw per sample, as in the padded layout, then one value per row
            shape = (rows.batch_size, 1)
        mask = torch.floor(keep + torch.rand(shape, dtype=x.dtype, device=x.device))
        if rows is not None:
            mask = mask.index_select(0, rows.sample)
        return x / keep * mask


class Block(nn.Module):
    """Pre-norm transformer block: ``x + DropPath(Attn(LN(x)))``, ``x + DropPath(MLP(LN(x)))``.

    With ``cross_attn`` the attention reads keys and values from the (un-normalised) context.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path: float = 0.0, cross_attn: bool = False,
                 qk_norm: bool = False):  # fmt: skip
        super().__init__()
        self.cross_attn = cross_attn
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=True, qk_norm=qk_norm)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x, context=None, key_mask=None, rows: Ragged | None = None, context_rows: Ragged | None = None):
        """``x [B, Lq, D]``; ``key_mask [B, Lk]`` masks the keys (of ``context`` or of ``x``).

        With ``rows``: ``x [Tq, D]`` and ``context [Tk, D]`` are flat real rows (layouts
        ``rows`` / ``context_rows``; see :meth:`Attention.forward_ragged`). Always called
        through the module (not a method) so that wrappers such as FSDP see the call.
        """
        attended = self.attn(self.norm1(x), context=context, key_mask=key_mask, rows=rows, context_rows=context_rows)
        x = x + self.drop_path(attended, rows)
        return x + self.drop_path(self.mlp(self.norm2(x)), rows)


def init_linear_weights(module: nn.Module, skip: tuple[nn.Module, ...] = ()) -> None:
    """Xavier-uniform weights and zero biases for every ``nn.Linear`` outside ``skip``
    (the reference's initialisation; patch projections keep PyTorch's default init)."""
    skipped = {id(m) for s in skip for m in s.modules()}
    for m in module.modules():
        if isinstance(m, nn.Linear) and id(m) not in skipped:
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
