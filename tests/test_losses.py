"""Losses against per-sample loop formulations of the reference semantics."""

import pytest
import torch
import torch.nn.functional as F

from mim_fast import losses
from mim_fast.nn import TokensAndMasks


def loop_masked_negatives(pred, target, mask, tau=0.1, threshold=0.999, masked=()):
    """The reference's per-sample loop semantics (written out plainly, for testing)."""
    total = 0.0
    for m in pred:
        p_all, t_all, k_all = pred[m].flatten(1, -2), target[m].flatten(1, -2), mask[m].flatten(1) == 2
        per_sample = []
        for b in range(p_all.shape[0]):
            p = F.normalize(p_all[b][k_all[b]].float(), dim=-1)
            t = F.normalize(t_all[b][k_all[b]].float(), dim=-1)
            c = p.shape[0]
            if c == 0:
                continue
            s = p @ t.t() / tau
            if m in masked and c > 1:
                same = (t @ t.t()) > threshold
                if bool(((~same).sum(1) == 0).any()):
                    continue
                s = s.masked_fill(same & ~torch.eye(c, dtype=torch.bool), float("-inf"))
            per_sample.append((2 * tau * F.cross_entropy(s, torch.arange(c), reduction="none")).mean())
        if per_sample:
            total = total + torch.stack(per_sample).mean()
    return total


def _tokens(seed=0, batch=6, dim=8, uniform_sample=None):
    g = torch.Generator().manual_seed(seed)
    shapes = {"sentinel2_l2a": (3, 3, 2, 1), "worldcover": (4, 4, 1, 1), "srtm": (3, 3, 1, 1)}
    pred, target, mask = {}, {}, {}
    for m, shape in shapes.items():
        pred[m] = torch.randn(batch, *shape, dim, generator=g, requires_grad=True)
        target[m] = torch.randn(batch, *shape, dim, generator=g)
        mask[m] = torch.randint(0, 4, (batch, *shape), generator=g)
    if uniform_sample is not None:  # every target of one sample identical: it must be skipped
        target["worldcover"][uniform_sample] = target["worldcover"][uniform_sample, :1, :1]
    return pred, target, mask


@pytest.mark.parametrize("uniform", [None, 0])
def test_masked_negatives_equals_the_loop_with_gradients(uniform):
    pred, target, mask = _tokens(uniform_sample=uniform)
    masked = ["worldcover", "srtm"]
    loss = losses.build({"type": "modality_patch_discrimination_masked_negatives", "mask_negatives_for_modalities": masked})
    preds = TokensAndMasks(**pred, **{f"{m}_mask": v for m, v in mask.items()})
    value = loss.compute(preds, {**target, **{f"{m}_mask": v for m, v in mask.items()}})
    want = loop_masked_negatives(pred, target, mask, masked=masked)
    torch.testing.assert_close(value, want, atol=1e-6, rtol=1e-5)
    got_g = torch.autograd.grad(value, list(pred.values()))
    want_g = torch.autograd.grad(want, list(pred.values()))
    for a, b in zip(got_g, want_g):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_masking_negatives_changes_the_value_only_for_listed_modalities():
    pred, target, mask = _tokens(uniform_sample=0)
    fields = {f"{m}_mask": v for m, v in mask.items()}
    plain = losses.build({"type": "modality_patch_discrimination_vec"}).compute({**pred, **fields}, {**target, **fields})
    unlisted = losses.build({"type": "modality_patch_discrimination_masked_negatives", "mask_negatives_for_modalities": []})
    torch.testing.assert_close(unlisted.compute({**pred, **fields}, {**target, **fields}), plain)
    listed = losses.build({"type": "modality_patch_discrimination_masked_negatives",
                           "mask_negatives_for_modalities": ["worldcover"]})  # fmt: skip
    assert not torch.allclose(listed.compute({**pred, **fields}, {**target, **fields}), plain)


def test_infonce_test_vector_and_direction():
    loss = losses.build({"type": "InfoNCE", "weight": 0.1})
    torch.testing.assert_close(loss.compute(torch.ones(16, 128), torch.zeros(16, 128)), torch.tensor(0.27725887))
    a, b = torch.randn(8, 16), torch.randn(8, 16)
    assert not torch.allclose(loss.compute(a, b), loss.compute(b, a)), "one-directional, as the reference"


def test_bad_loss_configs():
    with pytest.raises(ValueError, match="type"):
        losses.build({"tau": 0.1})
    with pytest.raises(ValueError, match="unknown loss"):
        losses.build({"type": "nope"})
    with pytest.raises(ValueError, match="bad arguments"):
        losses.build({"type": "InfoNCE", "temperature": 3})
    with pytest.raises(ValueError, match="a, b"):
        losses.InfoNCE().compute(torch.zeros(3, 4), torch.zeros(3, 5))
