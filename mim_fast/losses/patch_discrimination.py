"""Per-modality patch discrimination losses, vectorised over samples (no Python loop over
samples, no host synchronisation on accelerators). On CPU with the compiled extension the
per-modality terms come from one fused kernel (``mim_fast.ops.patch_disc``).

For one sample and one modality, with its decoder tokens ``i`` (predictions ``p_i``, targets
``t_j``, both L2-normalised) and ``s_ij = p_i . t_j / tau``::

    loss_i = 2 tau * (-s_ii + log sum_j exp(s_ij))

The sample's loss is the mean over its decoder tokens, the modality's loss the mean over
samples with decoder tokens, and the total the (weighted) sum over modalities.

Masked negatives (for ``mask_negatives_for_modalities``, the map modalities of the study):
targets whose cosine similarity with the query's target exceeds ``same_target_threshold``
(strictly) are removed from the denominator (the positive stays); if some token of a sample
has no valid negative left, the whole sample is skipped (not counted in the mean) — the
reference's per-sample loop semantics, kept on purpose.
"""

import torch
import torch.nn.functional as F

from ..mask_value import MaskValue
from ..ops.masked_gather import masked_gather
from ..ops.patch_disc import fused_available, patch_disc_terms
from ..nn.tokens import field, present_modalities


def _modality_terms(pred, target, valid, tau, threshold, mask_negatives, cast_fp32):
    """(sum of per-sample losses over contributing samples, number of contributing samples)
    for one modality; ``pred, target [B, L, D]``, ``valid [B, L]`` (real decoder tokens first).

    The per-token cross-entropy is ``logsumexp_j(s_ij) - s_ii`` over the allowed columns
    (real tokens, minus masked near-identical targets); padding rows are zeroed before the
    reduction so no row is empty (which would give NaN gradients).
    """
    if cast_fp32:
        pred, target = pred.float(), target.float()
    p = F.normalize(pred, dim=-1)
    t = F.normalize(target, dim=-1)
    scores = torch.bmm(p, t.transpose(1, 2)).mul_(1.0 / tau)
    count = valid.sum(1)
    allowed = valid[:, None, :]
    skip = torch.zeros_like(count, dtype=torch.bool)
    if mask_negatives and valid.shape[1] > 1:
        same = torch.bmm(t, t.transpose(1, 2)) > threshold
        negatives = (allowed & ~same).sum(-1)
        skip = ((negatives == 0) & valid & (count > 1)[:, None]).any(1)
        same &= (count > 1)[:, None, None]
        same.diagonal(dim1=1, dim2=2).fill_(False)  # the positive always stays
        allowed = allowed & ~same
    scores = scores.masked_fill_(~allowed, float("-inf")).masked_fill_(~valid[:, :, None], 0.0)
    ce = torch.logsumexp(scores, dim=-1) - scores.diagonal(dim1=1, dim2=2)
    per_token = torch.where(valid, ce, 0.0) * (2 * tau)
    contributes = (count > 0) & ~skip
    per_sample = per_token.sum(1) / (count * contributes).clamp_min(1)
    return (per_sample * contributes).sum(), contributes.sum()


def _bound(n_tokens: int, keep: torch.Tensor) -> int | None:
    """Packed length: exact on CPU (reading it costs nothing), the static ``n_tokens`` elsewhere."""
    return None if keep.device.type == "cpu" else n_tokens


def _selected_term(pred, target, keep, bound, tau, threshold, mask_negatives, cast_fp32, fused):
    """One modality's term (the mean over contributing samples of the per-sample losses) for
    the tokens selected by ``keep [B, N]`` in ``pred, target [B, N, D]``.

    ``fused``: one kernel on exactly-sized per-sample blocks (CPU with the compiled
    extension); otherwise pack the selected tokens (``bound`` rows per sample) and use the
    vectorised composition. Under CPU autocast the vectorised composition runs, so the
    value follows autocast's dtypes as before (the training loss disables autocast).
    """
    fused = fused and not torch.is_autocast_enabled("cpu")
    if fused and (cast_fp32 or pred.dtype in (torch.float32, torch.float64)):
        if cast_fp32:
            pred, target = pred.float(), target.float()
        return patch_disc_terms(pred, target, keep, tau, threshold, mask_negatives).mean
    p = masked_gather(pred, keep, max_len=bound)
    t = masked_gather(target, keep, max_len=bound)
    summed, contributing = _modality_terms(p.tokens, t.tokens, p.mask, tau, threshold, mask_negatives, cast_fp32)
    return summed / contributing.clamp_min(1)


class ModalityPatchDiscrimination:
    """``modality_patch_discrimination_vec`` and, with ``mask_negatives_for_modalities``,
    ``modality_patch_discrimination_masked_negatives`` (same config keys as the reference)."""

    def __init__(
        self,
        tau: float = 0.1,
        pred2unit: bool = False,
        weight: float = 1.0,
        modality_weights: dict | None = None,
        same_target_threshold: float = 0.999,
        mask_negatives_for_modalities: list | None = None,
        masked_negatives: bool = False,
    ):
        if pred2unit:
            raise NotImplementedError("pred2unit=True is not implemented (False in every configuration of the study)")
        self.tau = float(tau)
        self.weight = float(weight)
        self.modality_weights = modality_weights
        self.threshold = float(same_target_threshold)
        self.masked_negatives = masked_negatives
        self.mask_negatives_for = None if mask_negatives_for_modalities is None else set(mask_negatives_for_modalities)
        self.name = "ModalityPatchDiscMasked" if masked_negatives else "ModalityPatchDisc"

    def _weight_of(self, modality: str) -> float:
        if self.modality_weights is None:
            return 1.0
        if self.masked_negatives:
            return float(self.modality_weights.get(modality, 1.0))
        return float(self.modality_weights[modality])

    def _masks(self, modality: str) -> bool:
        return self.masked_negatives and (self.mask_negatives_for is None or modality in self.mask_negatives_for)

    def _total(self, per_modality):
        total = None
        for modality, term in per_modality:
            weight = self._weight_of(modality)
            term = term if weight == 1.0 else term * weight
            total = term if total is None else total + term
        if total is None:
            raise ValueError("predictions: no modality to compute the loss on")
        return total if self.weight == 1.0 else total * self.weight

    def compute(self, predictions, targets) -> torch.Tensor:
        """Loss of reference-shaped predictions and targets.

        Args:
            predictions: TokensAndMasks-like (``.<m>`` tokens ``[B, ..., D]`` and ``.<m>_mask``)
                or a dict ``{m: tokens, m + "_mask": mask}``; DECODER tokens are read from its masks.
            targets: the same layout (its masks are ignored, as in the reference).
        """
        terms, fused = [], None
        for modality in present_modalities(targets):
            pred = field(predictions, modality)
            mask = field(predictions, f"{modality}_mask")
            target = field(targets, modality)
            if pred is None or mask is None:
                raise ValueError(f"predictions: missing {modality!r} or {modality}_mask")
            b, d = pred.shape[0], pred.shape[-1]
            keep = mask.reshape(b, -1) == MaskValue.DECODER
            n = keep.shape[1]
            fused = fused_available(pred) if fused is None else fused
            terms.append((modality, _selected_term(
                pred.reshape(b, n, d), target.reshape(b, n, -1), keep, _bound(n, keep), self.tau, self.threshold,
                self._masks(modality), self.masked_negatives, fused,
            )))  # fmt: skip
        return self._total(terms)

    def compute_packed(self, pred, target, mask, group, modality_names, bounds=None) -> torch.Tensor:
        """Loss of packed decoder tokens (the fast path of ``LatentMIM.training_loss``).

        Args:
            pred, target: ``[B, L, D]`` decoder predictions and targets, packed in the global
                token order (modality blocks in ``modality_names`` order).
            mask: ``[B, L]`` real rows. group: ``[B, L]`` modality index of every row.
            modality_names: names of the modality indices.
            bounds: per modality, an upper bound on its decoder tokens per sample (used on
                accelerators instead of reading the counts on the host; default L).
        """
        terms, fused = [], fused_available(pred)
        for k, modality in enumerate(modality_names):
            keep = mask & (group == k)
            bound = _bound(bounds[k] if bounds else keep.shape[1], keep)
            terms.append((modality, _selected_term(
                pred, target, keep, bound, self.tau, self.threshold, self._masks(modality), self.masked_negatives, fused
            )))  # fmt: skip
        return self._total(terms)
