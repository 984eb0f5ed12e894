"""Fused patch discrimination terms (the compiled CPU kernel ``mim_fast::cpu_patch_disc``)
with autograd.

One call computes, for every sample of one modality, the mean per-token loss over its
selected tokens (see ``csrc/patch_disc.cpp`` for the formula): scores, masked negatives,
log-sum-exp and the skip rule in one pass over exactly-sized per-sample blocks, without a
padded ``[B, L, L]`` intermediate. ``mim_fast.losses`` uses it on CPU when the ``cpp``
backend runs; elsewhere the losses use their vectorised torch composition.
"""

from typing import NamedTuple

import torch

from .. import backends

_ops = torch.ops.mim_fast


def fused_available(x: torch.Tensor) -> bool:
    """Whether the fused kernel runs for tensors like ``x`` (CPU, ``cpp`` backend selected)."""
    return x.device.type == "cpu" and backends.select_name(x.device) == "cpp"


class PatchDiscTerms(NamedTuple):
    """One modality's patch discrimination terms.

    mean: ``[]`` the modality's loss, the mean of ``per_sample`` over contributing samples
        (0 when none contributes).
    per_sample: ``[B]`` ``2 tau * mean_i (logsumexp_j s_ij - s_ii)`` per sample (0 where it
        does not contribute).
    contributes: ``[B]`` 1.0 / 0.0 flags of the samples that count in the mean.
    """

    mean: torch.Tensor
    per_sample: torch.Tensor
    contributes: torch.Tensor


def patch_disc_terms(
    pred: torch.Tensor,
    target: torch.Tensor,
    keep: torch.Tensor,
    tau: float,
    threshold: float,
    mask_negatives: bool,
) -> PatchDiscTerms:
    """Patch discrimination losses of one modality.

    Args:
        pred, target: ``[B, N, D]`` float32 or float64 CPU tensors (normalised inside).
        keep: ``[B, N]`` bool, the tokens the loss is computed on (e.g. DECODER tokens).
        tau: temperature (> 0). threshold: cosine similarity above which two targets
            count as the same (used when ``mask_negatives``).
        mask_negatives: remove near-identical targets from the negatives and skip samples
            where a token has no negative left.

    Returns:
        :class:`PatchDiscTerms` ``(mean, per_sample, contributes)``; ``mean`` and
        ``per_sample`` carry gradients to ``pred`` and ``target`` (first order only: the
        backward kernel is not itself differentiable).
    """
    save = torch.is_grad_enabled() and (pred.requires_grad or target.requires_grad)
    mean, per_sample, contributes, _ = _ops.cpu_patch_disc(
        pred, target, keep, float(tau), float(threshold), bool(mask_negatives), save
    )
    return PatchDiscTerms(mean, per_sample, contributes)


def _setup_context(ctx, inputs, output):
    pred, target, keep, _, _, _, save_probs = inputs
    _, _, contributes, probs = output
    ctx.save_probs = save_probs
    ctx.mark_non_differentiable(contributes, probs)
    ctx.save_for_backward(pred, target, keep, probs, contributes)


def _backward(ctx, grad_mean, grad_per_sample, _grad_contributes, _grad_probs):
    if not ctx.save_probs:
        raise RuntimeError(
            "cpu_patch_disc: called with save_probs=False, so it cannot be differentiated; "
            "use mim_fast.ops.patch_disc.patch_disc_terms, which saves them when a gradient is needed"
        )
    pred, target, keep, probs, contributes = ctx.saved_tensors
    need_pred, need_target = ctx.needs_input_grad[:2]
    # mean = sum_b per_sample[b] / max(1, count): its gradient reaches contributing samples.
    grad = contributes * (grad_mean / contributes.sum().clamp_min(1))
    if grad_per_sample is not None:
        grad = grad + grad_per_sample
    grad_pred, grad_target = _ops.cpu_patch_disc_backward(
        grad.contiguous(), pred, target, keep, probs, contributes, need_pred, need_target
    )
    return (grad_pred if need_pred else None, grad_target if need_target else None, None, None, None, None, None)


def _register() -> None:
    from .._extension import load_status

    if not load_status()[0]:
        return
    torch.library.register_autograd("mim_fast::cpu_patch_disc", _backward, setup_context=_setup_context)

    @torch.library.register_fake("mim_fast::cpu_patch_disc")
    def _(pred, target, keep, tau, threshold, mask_negatives, save_probs):
        # probs holds sum_b c_b^2 values: a size known only from keep's contents.
        n = torch.library.get_ctx().new_dynamic_size() if save_probs else 0
        per_sample = pred.new_empty(pred.shape[:1])
        return pred.new_empty(()), per_sample, torch.empty_like(per_sample), pred.new_empty(n)

    @torch.library.register_fake("mim_fast::cpu_patch_disc_backward")
    def _(grad, pred, target, keep, probs, contributes, need_pred, need_target):
        return (
            torch.empty_like(pred, memory_format=torch.contiguous_format) if need_pred else pred.new_empty(0),
            torch.empty_like(target, memory_format=torch.contiguous_format) if need_target else target.new_empty(0),
        )


_register()
