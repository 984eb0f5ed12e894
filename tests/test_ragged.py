"""Blocks on flat real rows (the CPU path) against the padded layout with key masks."""

import pytest
import torch

from mim_fast.nn import Block
from mim_fast.nn import ragged as ragged_module
from mim_fast.nn.ragged import Ragged


def _prefix_mask(lengths, width):
    return torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]


def test_pack_unpack_round_trip_and_prefix_detection():
    mask = _prefix_mask([3, 0, 5, 3], 5)
    rows = Ragged.of(mask)
    assert rows is not None and rows.lengths == [3, 0, 5, 3]
    x = torch.randn(4, 5, 2)
    flat = rows.pack(x)
    assert torch.equal(flat, x[mask])
    back = rows.unpack(flat)
    assert torch.equal(back[mask], x[mask]) and torch.equal(back[~mask], torch.zeros_like(back[~mask]))
    assert torch.equal(rows.sample, torch.tensor([0, 0, 0, 2, 2, 2, 2, 2, 3, 3, 3]))
    holes = mask.clone()
    holes[2, 1] = False  # not a prefix: the flat path does not apply
    assert Ragged.of(holes) is None


@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("qk_norm", [False, True])
def test_block_ragged_equals_padded_with_gradients(cross, qk_norm):
    torch.manual_seed(0)
    block = Block(16, 4, 2.0, cross_attn=cross, qk_norm=qk_norm)
    q_lengths, k_lengths = [5, 3, 5, 0, 4], [6, 6, 2, 3, 6]
    x = torch.randn(5, 5, 16, requires_grad=True)
    q_mask = _prefix_mask(q_lengths, 5)
    if cross:
        context = torch.randn(5, 6, 16, requires_grad=True)
        k_mask = _prefix_mask(k_lengths, 6)
    else:
        context, k_mask = None, q_mask
    padded = block(x, context=context, key_mask=k_mask)
    rows = Ragged.of(q_mask)
    context_rows = Ragged.of(k_mask) if cross else None
    flat = block(rows.pack(x), context=None if context is None else context_rows.pack(context), rows=rows,
                 context_rows=context_rows)
    torch.testing.assert_close(flat, padded[q_mask], atol=1e-6, rtol=1e-5)
    leaves = [x, *block.parameters()] + ([context] if cross else [])
    weights = torch.randn(flat.shape)  # a non-uniform upstream gradient on the real rows
    got = torch.autograd.grad((flat * weights).sum(), leaves, allow_unused=True)
    want = torch.autograd.grad((padded[q_mask] * weights).sum(), leaves, allow_unused=True)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_queries_without_keys_get_zero_attention():
    torch.manual_seed(1)
    block = Block(8, 2, 2.0, cross_attn=True)
    q_mask, k_mask = _prefix_mask([2, 3], 3), _prefix_mask([0, 4], 4)
    x, context = torch.randn(2, 3, 8), torch.randn(2, 4, 8)
    rows, context_rows = Ragged.of(q_mask), Ragged.of(k_mask)
    flat = rows.pack(x)
    attended = block.attn(block.norm1(flat), context=context_rows.pack(context), rows=rows, context_rows=context_rows)
    torch.testing.assert_close(attended[:2], block.attn.proj.bias.expand(2, -1))  # proj of zeros
    assert torch.isfinite(attended).all()


def test_batches_without_any_query_row():
    block = Block(8, 2, 2.0, cross_attn=True)
    rows, context_rows = Ragged.of(_prefix_mask([0, 0], 3)), Ragged.of(_prefix_mask([2, 4], 4))
    context = torch.randn(2, 4, 8)
    out = block(torch.zeros(0, 8), context=context_rows.pack(context), rows=rows, context_rows=context_rows)
    assert out.shape == (0, 8)
    assert rows.unpack(out).shape == (2, 3, 8)


def test_drop_path_draws_per_sample_as_the_padded_layout():
    block = Block(8, 2, 2.0, drop_path=0.5).train()
    mask = _prefix_mask([3, 1, 3, 2], 3)
    x = torch.randn(4, 3, 8)
    torch.manual_seed(7)
    padded = block(x, key_mask=mask)
    rows = Ragged.of(mask)
    torch.manual_seed(7)
    flat = block(rows.pack(x), rows=rows)
    torch.testing.assert_close(flat, padded[mask], atol=1e-6, rtol=1e-5)


def test_model_loss_and_gradients_equal_on_both_layouts(monkeypatch):
    """The whole training loss on CPU: flat rows (default) against the padded layout."""
    from mim_fast.bench.model import masked_batch
    from mim_fast import losses
    from mim_fast.experiments import build_model, get_experiment

    key = "single_bandset_all12_random_band_dropout_cross_random_masked_neg"
    torch.manual_seed(0)
    model = build_model(key, "nano", drop_path=0.0, band_dropout_rate=0.0).train()
    sample = masked_batch(4, 3, 2, batch=3, seed=1)
    loss = losses.build(get_experiment(key).loss)

    def run():
        model.zero_grad(set_to_none=True)
        value = model.training_loss(sample, 4, loss).loss
        value.backward()
        return value.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    flat_value, flat_grads = run()
    monkeypatch.setattr(ragged_module.Ragged, "of", staticmethod(lambda mask: None))
    padded_value, padded_grads = run()
    torch.testing.assert_close(flat_value, padded_value, atol=1e-5, rtol=1e-5)
    assert len(flat_grads) == len(padded_grads)
    for a, b in zip(flat_grads, padded_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
