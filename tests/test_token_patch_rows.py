"""The CPU row builder (``cpu_token_patches``) against the reference ``token_patches``.

The float path has its own vector code per instruction set (a transposed column pass for
fewer than four channels, register blocks of 4 or 8 lanes): channel counts, time layouts,
band masks, border classes and padding rows are covered for every patch size, on the copy
this machine picks and on the baseline copy (``MIM_FAST_CPU_BASELINE=1``, a fresh process).
"""

import pytest
import torch
from helpers import assert_baseline_isa_script_ok
from hypothesis import given, settings
from hypothesis import strategies as st

import mim_fast
from mim_fast.ops._token_layout import device_tables
from mim_fast.reference.token_patches import token_patches as reference_token_patches

pytestmark = pytest.mark.skipif(not mim_fast.backends.status("cpp").available, reason="cpp backend unavailable")

BASE = 8


def row_case(patch, rows, cols, time, channels, n_rows, *, keep, padding, seed, dtype=torch.float32):
    """(x, keep, work, tables): random work rows over every (i, j, t) of a small batch."""
    gen = torch.Generator().manual_seed(seed)
    batch = 3
    x = torch.randn(batch, rows * patch, cols * patch, time, channels, generator=gen, dtype=dtype)
    row_class, col_class, tables = device_tables(patch, BASE, rows, cols, torch.device("cpu"), torch.float32)
    b = torch.randint(0, batch, (n_rows,), generator=gen).sort().values
    i = torch.randint(0, rows, (n_rows,), generator=gen)
    j = torch.randint(0, cols, (n_rows,), generator=gen)
    t = torch.randint(0, time, (n_rows,), generator=gen)
    slot = torch.arange(n_rows)
    if padding:
        slot = torch.where(torch.rand(n_rows, generator=gen) < 0.2, -1, slot)
    work = torch.stack((b, i, j, t, slot, row_class[i], col_class[j]), dim=1)
    band_keep = torch.rand(batch, channels, generator=gen) < 0.6 if keep else None
    return x, band_keep, work, tables


def assert_rows_match(patch, rows, cols, time, channels, n_rows, keep, padding, seed):
    x, band_keep, work, tables = row_case(
        patch, rows, cols, time, channels, n_rows, keep=keep, padding=padding, seed=seed
    )
    got = torch.ops.mim_fast.cpu_token_patches(x, band_keep, work, tables, patch)
    want = reference_token_patches(x.double(), band_keep, work, tables.double(), patch)
    assert got.shape == (n_rows, BASE * BASE * channels)
    # Each patch value is a resize of at most 8 x 8 window pixels: fp32 sums of O(1) terms.
    torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=1e-5)
    if patch == BASE:
        assert torch.equal(got.double(), want), "p == P is a copy: bit-exact"
    padded = work[:, 4] < 0
    assert torch.all(got[padded] == 0), "padding rows must be exactly zero"


@settings(max_examples=60, deadline=None)
@given(
    patch=st.integers(1, 8),
    rows=st.integers(1, 6),
    cols=st.integers(1, 6),
    time=st.sampled_from([1, 3]),
    channels=st.sampled_from([1, 2, 3, 4, 5, 8, 11, 12, 30]),
    n_rows=st.integers(0, 40),
    keep=st.booleans(),
    padding=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_row_builder_matches_reference(patch, rows, cols, time, channels, n_rows, keep, padding, seed):
    assert_rows_match(patch, rows, cols, time, channels, n_rows, keep, padding, seed)


@pytest.mark.parametrize("channels", [1, 2, 12, 30])
@pytest.mark.parametrize("patch", [1, 2, 3, 4, 8])
def test_row_builder_study_shapes(patch, channels):
    """Grids of the study's shapes (12 x 12 at p = 1 has two border classes per side)."""
    hw = {1: 12, 2: 8, 3: 5, 4: 6, 8: 4}[patch]
    assert_rows_match(patch, hw, hw, 2, channels, 200, True, False, seed=patch * 100 + channels)


def test_row_builder_bfloat16_and_float64():
    for dtype, tol in ((torch.bfloat16, 3e-2), (torch.float64, 1e-12)):
        x, keep, work, tables = row_case(3, 4, 3, 2, 5, 30, keep=True, padding=True, seed=1, dtype=dtype)
        got = torch.ops.mim_fast.cpu_token_patches(x, keep, work, tables, 3)
        want = reference_token_patches(x.double(), keep, work, tables.double(), 3)
        assert got.dtype == dtype
        torch.testing.assert_close(got.double(), want, atol=tol, rtol=tol)


def test_row_builder_baseline_isa(tmp_path):
    """The baseline copy of the float row builder (this machine may pick the AVX2 one)."""
    script = (
        "from test_token_patch_rows import assert_rows_match;"
        "[assert_rows_match(p, 5, 4, t, c, 60, k, True, seed=p * c + t)"
        " for p in (1, 2, 3, 4, 8) for c in (1, 2, 3, 5, 12, 30) for t in (1, 3) for k in (False, True)];"
        "print('ok')"
    )
    assert_baseline_isa_script_ok(script, tmp_path)


@pytest.mark.parametrize("patch", [1, 3])
def test_row_builder_identity_tables_read_zeros_outside_the_image(patch):
    """Raw windows (identity tables, as for folded weights) of border tokens: pixels outside
    the image are zero, never read."""
    x, keep, work, tables = row_case(patch, 3, 4, 2, 5, 50, keep=True, padding=False, seed=3)
    window = tables.shape[3]
    eye = torch.eye(window)
    identity = torch.stack((eye, eye))[:, None]
    work[:, 5:] = 0
    got = torch.ops.mim_fast.cpu_token_patches(x, keep, work, identity, patch)
    want = reference_token_patches(x.double(), keep, work, identity.double(), patch)
    assert torch.equal(got.double(), want)
