"""InfoNCE between the pooled representations of two views (one-directional, as the reference)."""

import torch
import torch.nn.functional as F


class InfoNCE:
    """``weight * CE(normalize(a) normalize(b)^T / tau, arange(B))``: a -> b only."""

    name = "InfoNCE"

    def __init__(self, tau: float = 0.1, weight: float = 1.0):
        self.tau = float(tau)
        self.weight = float(weight)

    def compute(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``a, b [B, E]`` -> scalar."""
        if a.dim() != 2 or a.shape != b.shape:
            raise ValueError(f"a, b: expected two [B, E] tensors of the same shape, got {list(a.shape)} and {list(b.shape)}")
        logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).t()
        labels = torch.arange(a.shape[0], device=a.device)
        return self.weight * F.cross_entropy(logits / self.tau, labels)
