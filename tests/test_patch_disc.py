"""The fused patch discrimination kernel (cpu_patch_disc) against a per-sample loop."""

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_baseline_isa_script_ok
from hypothesis import given, settings
from hypothesis import strategies as st

import mim_fast
from mim_fast import losses
from mim_fast.nn import TokensAndMasks
from mim_fast.ops.patch_disc import patch_disc_terms

pytestmark = pytest.mark.skipif(not mim_fast.backends.status("cpp").available, reason="cpp extension not built")
OPS = torch.ops.mim_fast


def loop_terms(pred, target, keep, tau=0.1, threshold=0.999, masked=False):
    """Per-sample losses and contribution flags, one sample at a time (the reference's loop)."""
    per_sample, contributes = [], []
    for b in range(pred.shape[0]):
        rows = keep[b]
        c = int(rows.sum())
        p = F.normalize(pred[b][rows], dim=-1)
        t = F.normalize(target[b][rows], dim=-1)
        zero = pred.sum() * 0  # keeps the graph connected for skipped samples
        if c == 0:
            per_sample.append(zero)
            contributes.append(0.0)
            continue
        s = p @ t.t() / tau
        if masked and c > 1:
            same = (t @ t.t()) > threshold
            if bool(((~same).sum(1) == 0).any()):
                per_sample.append(zero)
                contributes.append(0.0)
                continue
            s = s.masked_fill(same & ~torch.eye(c, dtype=torch.bool), float("-inf"))
        per_sample.append(2 * tau * F.cross_entropy(s, torch.arange(c)))
        contributes.append(1.0)
    return torch.stack(per_sample), torch.tensor(contributes, dtype=pred.dtype)


def _case(batch, tokens, dim, dtype=torch.float32, seed=0, duplicates=0, uniform_sample=None):
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(batch, tokens, dim, generator=g, dtype=dtype)
    target = torch.randn(batch, tokens, dim, generator=g, dtype=dtype)
    keep = torch.rand(batch, tokens, generator=g) < 0.6
    for _ in range(duplicates):  # near-identical targets inside a sample: masked negatives
        b, i, j = (int(torch.randint(n, (1,), generator=g)) for n in (batch, tokens, tokens))
        target[b, j] = target[b, i] * 2.0
    if uniform_sample is not None:  # every target the same: the sample is skipped
        target[uniform_sample] = target[uniform_sample, :1]
    return pred, target, keep


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("masked", [False, True])
def test_values_and_gradients_equal_the_loop(dtype, masked):
    pred, target, keep = _case(5, 40, 16, dtype, duplicates=30, uniform_sample=2)
    pred.requires_grad_(True)
    target.requires_grad_(True)
    terms = patch_disc_terms(pred, target, keep, 0.1, 0.999, masked)
    want, want_c = loop_terms(pred, target, keep, masked=masked)
    want_mean = want.sum() / want_c.sum().clamp_min(1)
    assert torch.equal(terms.contributes, want_c)
    tol = {"atol": 1e-6, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-12, "rtol": 1e-10}
    torch.testing.assert_close(terms.per_sample, want, **tol)
    torch.testing.assert_close(terms.mean, want_mean, **tol)
    weights = torch.linspace(0.5, 2.0, pred.shape[0], dtype=dtype)  # a non-uniform upstream gradient
    # both outputs at once: the backward adds the mean's share to the per-sample gradient
    got_g = torch.autograd.grad((terms.per_sample * weights).sum() + 3 * terms.mean, (pred, target))
    want_g = torch.autograd.grad((want * weights).sum() + 3 * want_mean, (pred, target))
    tol = {"atol": 1e-6, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 1e-12, "rtol": 1e-9}
    for a, b in zip(got_g, want_g):
        torch.testing.assert_close(a, b, **tol)


def test_masking_changes_only_samples_with_near_identical_targets():
    pred, target, keep = _case(4, 30, 8, duplicates=0)
    keep[1, :4] = True
    target[1, 1] = target[1, 0] * 3.0  # tokens 0 and 1 of sample 1: the same target
    _, plain, _ = patch_disc_terms(pred, target, keep, 0.1, 0.999, False)
    _, masked, contributes = patch_disc_terms(pred, target, keep, 0.1, 0.999, True)
    assert torch.equal(contributes, torch.ones(4))
    assert masked[1] < plain[1]  # a removed negative lowers that sample's loss
    torch.testing.assert_close(masked[[0, 2, 3]], plain[[0, 2, 3]], atol=0, rtol=0)


def test_gradcheck_float64():
    pred, target, keep = _case(3, 7, 5, torch.float64, duplicates=4)
    pred.requires_grad_(True)
    target.requires_grad_(True)
    for masked in (False, True):
        assert torch.autograd.gradcheck(lambda p, t: patch_disc_terms(p, t, keep, 0.2, 0.999, masked)[:2], (pred, target))


def test_edge_cases_empty_single_and_zero_vectors():
    pred, target, _ = _case(4, 6, 3)
    keep = torch.zeros(4, 6, dtype=torch.bool)
    keep[1, 2] = True  # one token: its own positive, loss 0
    keep[2] = True
    pred[2, 0] = 0.0  # normalised with eps: a zero vector stays zero
    target[2, 3] = 0.0
    _, got, got_c = patch_disc_terms(pred, target, keep, 0.1, 0.999, True)
    want, want_c = loop_terms(pred, target, keep, masked=True)
    assert torch.equal(got_c, want_c) and got_c.tolist() == [0.0, 1.0, 1.0, 0.0]
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    assert got[1] == 0 and got[0] == 0 and got[3] == 0
    mean, empty, empty_c = patch_disc_terms(pred[:0], target[:0], keep[:0], 0.1, 0.999, True)
    assert empty.shape == (0,) and empty_c.shape == (0,) and mean == 0
    none_kept = patch_disc_terms(pred, target, torch.zeros_like(keep), 0.1, 0.999, True)
    assert none_kept.mean == 0 and not none_kept.contributes.any()


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 4),
    tokens=st.integers(0, 12),
    dim=st.integers(1, 9),
    duplicates=st.integers(0, 6),
    masked=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_property_equals_loop(batch, tokens, dim, duplicates, masked, seed):
    pred, target, keep = _case(batch, tokens, dim, torch.float64, seed=seed, duplicates=duplicates if tokens else 0)
    _, got, got_c = patch_disc_terms(pred, target, keep, 0.1, 0.999, masked)
    want, want_c = loop_terms(pred, target, keep, masked=masked)
    assert torch.equal(got_c, want_c)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)


def test_no_probabilities_kept_without_gradients():
    pred, target, keep = _case(3, 10, 4)
    probs = OPS.cpu_patch_disc(pred, target, keep, 0.1, 0.999, True, False)[3]
    assert probs.numel() == 0
    probs = OPS.cpu_patch_disc(pred, target, keep, 0.1, 0.999, True, True)[3]
    assert probs.numel() == int((keep.sum(1) ** 2).sum())
    pred.requires_grad_(True)
    per_sample = OPS.cpu_patch_disc(pred, target, keep, 0.1, 0.999, True, False)[1]
    with pytest.raises(RuntimeError, match="save_probs=False"):
        per_sample.sum().backward()


@pytest.mark.parametrize(
    "change, error, match",
    [
        (lambda p, t, k: (p.bfloat16(), t.bfloat16(), k), TypeError, "pred: expected dtype float32 or float64"),
        (lambda p, t, k: (p, t.double(), k), TypeError, "target: expected dtype"),
        (lambda p, t, k: (p, t[:, :-1], k), ValueError, "target: expected shape"),
        (lambda p, t, k: (p, t, k.int()), TypeError, "keep: expected dtype"),
        (lambda p, t, k: (p, t, k[:, :-1]), ValueError, "keep: expected shape"),
        (lambda p, t, k: (p[0], t[0], k), ValueError, "pred: expected a 3-d tensor"),
    ],
)
def test_bad_input_names_the_argument(change, error, match):
    pred, target, keep = change(*_case(2, 5, 3))
    with pytest.raises(error, match=match):
        OPS.cpu_patch_disc(pred, target, keep, 0.1, 0.999, True, False)


def test_bad_temperature_and_backward_inputs():
    pred, target, keep = _case(2, 5, 3)
    with pytest.raises(ValueError, match="tau: expected a positive temperature"):
        OPS.cpu_patch_disc(pred, target, keep, 0.0, 0.999, True, False)
    _, _, contributes, probs = OPS.cpu_patch_disc(pred, target, keep, 0.1, 0.999, True, True)
    with pytest.raises(ValueError, match="probs: expected shape"):
        OPS.cpu_patch_disc_backward(torch.ones(2), pred, target, keep, probs[1:], contributes, True, True)
    with pytest.raises(ValueError, match="grad: expected shape"):
        OPS.cpu_patch_disc_backward(torch.ones(3), pred, target, keep, probs, contributes, True, True)


def test_opcheck():
    pred, target, keep = _case(3, 8, 4)
    pred.requires_grad_(True)
    torch.library.opcheck(OPS.cpu_patch_disc, (pred, target, keep, 0.1, 0.999, True, True))
    torch.library.opcheck(
        OPS.cpu_patch_disc, (pred.detach(), target, keep, 0.1, 0.999, False, False),
        test_utils=("test_schema", "test_faketensor"),
    )  # fmt: skip


@pytest.mark.parametrize("loss_type", ["modality_patch_discrimination_masked_negatives", "modality_patch_discrimination_vec"])
def test_loss_module_fused_equals_vectorised(loss_type):
    """The loss on CPU (fused kernel) and with the reference backend (vectorised composition)."""
    g = torch.Generator().manual_seed(3)
    mods = {"sentinel2_l2a": (3, 3, 2, 1), "worldcover": (4, 4, 1, 1)}
    pred = {m: torch.randn(5, *s, 8, generator=g, requires_grad=True) for m, s in mods.items()}
    target = {m: torch.randn(5, *s, 8, generator=g, requires_grad=True) for m, s in mods.items()}
    mask = {m: torch.randint(0, 4, (5, *s), generator=g) for m, s in mods.items()}
    target["worldcover"].data[1, 1] = target["worldcover"].data[1, 0]  # near-identical targets
    config = {"type": loss_type}
    if loss_type.endswith("masked_negatives"):
        config["mask_negatives_for_modalities"] = ["worldcover"]
    loss = losses.build(config)
    preds = TokensAndMasks(**pred, **{f"{m}_mask": v for m, v in mask.items()})
    targets = TokensAndMasks(**target, **{f"{m}_mask": v for m, v in mask.items()})
    leaves = [*pred.values(), *target.values()]
    fused = loss.compute(preds, targets)
    fused_g = torch.autograd.grad(fused, leaves)
    with mim_fast.use_backend("reference"):
        vectorised = loss.compute(preds, targets)
    vectorised_g = torch.autograd.grad(vectorised, leaves)
    torch.testing.assert_close(fused, vectorised, atol=1e-6, rtol=1e-5)
    for a, b in zip(fused_g, vectorised_g):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_baseline_isa_kernels_match_the_loop(tmp_path):
    """The float passes compiled for the baseline ISA (this test's machine may pick the AVX2
    copy) and the GEMMs through ATen instead of the BLAS directly: forced with
    MIM_FAST_CPU_BASELINE=1 in a fresh process."""
    script = (
        "import torch;"
        "from test_patch_disc import _case, loop_terms;"
        "from mim_fast.ops.patch_disc import patch_disc_terms;"
        "p, t, k = _case(5, 40, 19, duplicates=30, uniform_sample=2); p.requires_grad_(True);"
        "terms = patch_disc_terms(p, t, k, 0.1, 0.999, True); want, want_c = loop_terms(p, t, k, masked=True);"
        "assert torch.equal(terms.contributes, want_c);"
        "torch.testing.assert_close(terms.per_sample, want, atol=1e-6, rtol=1e-5);"
        "g = torch.autograd.grad(terms.per_sample.sum(), p)[0]; w = torch.autograd.grad(want.sum(), p)[0];"
        "torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-4); print('ok')"
    )
    assert_baseline_isa_script_ok(script, tmp_path)


def test_nan_inputs_propagate():
    pred, target, keep = _case(2, 6, 4)
    keep[:] = True
    pred[0, 1, 0] = float("nan")
    _, per_sample, _ = patch_disc_terms(pred, target, keep, 0.1, 0.999, False)
    assert torch.isnan(per_sample[0]) and torch.isfinite(per_sample[1])


def test_loss_under_cpu_autocast_uses_the_vectorised_composition():
    g = torch.Generator().manual_seed(5)
    pred = {"worldcover": torch.randn(3, 4, 4, 1, 1, 16, generator=g)}
    target = {"worldcover": torch.randn(3, 4, 4, 1, 1, 16, generator=g)}
    mask = {"worldcover_mask": torch.full((3, 4, 4, 1, 1), 2)}
    loss = losses.build({"type": "modality_patch_discrimination_masked_negatives"})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused_backend = loss.compute({**pred, **mask}, {**target, **mask})
        with mim_fast.use_backend("reference"):
            vectorised = loss.compute({**pred, **mask}, {**target, **mask})
    assert torch.equal(fused_backend, vectorised)
