"""Per-sample loop formulation of the masked-negatives patch discrimination loss.

The reference computes it one sample at a time; this is that semantics written plainly,
the baseline the vectorised loss (``mim_fast.losses``) is tested and benchmarked against.
"""

import torch
import torch.nn.functional as F

from ..mask_value import MaskValue


def masked_negatives_loop(predictions: dict, targets: dict, masks: dict, tau: float = 0.1, threshold: float = 0.999,
                          masked_modalities=(), weight: float = 1.0) -> torch.Tensor:  # fmt: skip
    """Sum over modalities of the mean over samples of the mean per-token loss.

    Args:
        predictions, targets: ``{modality: [B, ..., D]}``; masks: ``{modality: [B, ...]}``.
        masked_modalities: modalities whose near-identical targets (cosine > threshold) are
            removed from the negatives; a sample where some token has no negative left is skipped.
    """
    total = None
    for m in predictions:
        p_all, t_all = predictions[m].flatten(1, -2), targets[m].flatten(1, -2)
        keep = masks[m].flatten(1) == MaskValue.DECODER
        per_sample = []
        for b in range(p_all.shape[0]):
            c = int(keep[b].sum())
            if c == 0:
                continue
            p = F.normalize(p_all[b][keep[b]].float(), dim=-1)
            t = F.normalize(t_all[b][keep[b]].float(), dim=-1)
            s = p @ t.t() / tau
            if m in masked_modalities and c > 1:
                same = (t @ t.t()) > threshold
                if bool(((~same).sum(1) == 0).any()):
                    continue
                s = s.masked_fill(same & ~torch.eye(c, dtype=torch.bool, device=s.device), float("-inf"))
            per_sample.append((2 * tau * F.cross_entropy(s, torch.arange(c, device=s.device), reduction="none")).mean())
        if per_sample:
            term = torch.stack(per_sample).mean()
            total = term if total is None else total + term
    return total * weight
