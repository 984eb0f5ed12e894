"""Every op is a torch.library op with fake + autograd registrations: opcheck and torch.compile."""

import pytest
import torch

import mim_fast

OPS = torch.ops.mim_fast


def _opcheck_cases(device):
    g = torch.Generator().manual_seed(0)
    x5 = torch.randn(2, 4, 4, 2, 3, generator=g).to(device)
    w = torch.randn(5, 2 * 2 * 3, generator=g).to(device)
    b = torch.randn(5, generator=g).to(device)
    keep_bands = torch.tensor([[True, False, True], [False, True, True]], device=device)
    keep_tokens = (torch.rand(2, 6, generator=g) < 0.5).to(device)
    indices, seqlens = mim_fast.reference.gather_indices(keep_tokens)
    mask = torch.arange(6, device=device)[None] < seqlens[:, None]
    tokens = torch.randn(2, 6, 4, generator=g).to(device)
    grad_out = torch.randn(2, 2, 2, 2, 5, generator=g).to(device)
    seed = torch.tensor([123], dtype=torch.int64, device=device)
    rate = torch.tensor(0.5, device=device)
    return [
        ("band_dropout_mask", OPS.band_dropout_mask, (seed, rate, 4, 3)),
        ("band_dropout_apply", OPS.band_dropout_apply, (x5.reshape(2, 32, 3).clone().requires_grad_(True), keep_bands)),
        ("patch_embed", OPS.patch_embed, (x5.clone().requires_grad_(True), w.clone().requires_grad_(True), b.requires_grad_(True), keep_bands, 2)),
        ("patch_embed_nobias", OPS.patch_embed, (x5, w.clone().requires_grad_(True), None, None, 2)),
        ("patch_embed_backward", OPS.patch_embed_backward, (grad_out, x5.detach(), w.detach(), keep_bands, 2, True, True, True)),
        ("gather_indices", OPS.gather_indices, (keep_tokens, 6)),
        ("pack_rows", OPS.pack_rows, (tokens.clone().requires_grad_(True), indices, mask)),
        ("unpack_rows", OPS.unpack_rows, (tokens.clone().requires_grad_(True), indices, mask, 6)),
    ]


@pytest.mark.parametrize("case", range(8))
def test_opcheck(backend, case):
    _, device = backend
    name, op, args = _opcheck_cases(device)[case]
    torch.library.opcheck(op, args)


class AllOps(torch.nn.Module):
    """Band dropout -> patch embed -> masked gather -> scatter back, with a static max_len."""

    def __init__(self, bands=3, patch=2, width=8):
        super().__init__()
        self.proj = torch.nn.Linear(patch * patch * bands, width)
        self.patch = patch

    def forward(self, x, token_keep, max_len: int):
        y, keep = mim_fast.band_dropout(x, 0.0)
        tokens = mim_fast.patch_embed(y, self.proj.weight, self.proj.bias, patch_size=self.patch, keep=keep)
        tokens = tokens.flatten(1, -2)
        packed = mim_fast.masked_gather(tokens, token_keep, max_len=max_len)
        return mim_fast.masked_scatter(packed.tokens * 2.0, packed.indices, packed.mask)


def _all_ops_inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 4, 2, 3, generator=g)
    keep = torch.rand(2, 8, generator=g) < 0.5
    return x, keep


def test_compile_fullgraph_has_no_graph_break():
    model = AllOps()
    x, keep = _all_ops_inputs()
    explanation = torch._dynamo.explain(model)(x, keep, 8)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_compile_fullgraph_matches_eager_forward_and_backward():
    torch._dynamo.reset()
    model = AllOps()
    x, keep = _all_ops_inputs()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    eager_out = model(x, keep, 8)
    eager_out.sum().backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    out = compiled(x, keep, 8)
    out.sum().backward()
    torch.testing.assert_close(out, eager_out)
    for p, expected in zip(model.parameters(), eager_grads):
        torch.testing.assert_close(p.grad, expected)


def test_compile_fullgraph_patch_embed_at_another_patch_size():
    """p != P under torch.compile: traced through the resize path, equal to eager."""
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(2, 6, 6, 2, 3, generator=g), torch.randn(5, 64 * 3, generator=g), torch.randn(5, generator=g)
    fn = lambda x, w, b: mim_fast.patch_embed(x, w, b, patch_size=2)  # noqa: E731
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, w, b), fn(x, w, b), atol=1e-5, rtol=1e-5)
