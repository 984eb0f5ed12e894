"""Masking strategies: the reference's invariants (any seed) and clear config errors."""

import pytest
import torch

from mim_fast import MaskValue, masking
from mim_fast.bench.stage import make_batch
from mim_fast.data import MISSING_VALUE, MaskedBatch
from mim_fast.experiments import get_experiment

MAPS = list(get_experiment("single_bandset_cross_random_masked_neg").decode_only)
TOKENIZATION = get_experiment("single_bandset_cross_random_masked_neg").tokenization
ENCODABLE = ("sentinel2_l2a", "sentinel1", "landsat")
P = 4


def _batch(batch=12, seed=0):
    base = make_batch(batch, P, 4, 6, seed=seed)
    data = {m: getattr(base, m).clone() for m in base.modalities}
    data["sentinel1"][:, :, :, 3:] = MISSING_VALUE  # S1 missing at later timesteps
    data["landsat"][: batch // 3] = MISSING_VALUE  # Landsat missing for some samples
    data["cdl"][::2] = MISSING_VALUE
    return MaskedBatch(timestamps=base.timestamps, **data)


def _tokens(out, m):
    return getattr(out, f"{m}_mask")[:, ::P, ::P]


def _common_invariants(batch, out):
    for m in batch.modalities:
        mask = getattr(out, f"{m}_mask")
        data = getattr(batch, m)
        assert mask.shape == data.shape[:-1] + (1,)
        assert mask.dtype == torch.int64 and int(mask.min()) >= 0 and int(mask.max()) <= 3
        missing = (data == MISSING_VALUE).any(-1, keepdim=True)
        assert torch.all(mask[missing] == MaskValue.MISSING)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_counts(seed):
    batch = _batch(seed=seed)
    out = masking.build({"type": "random"}, TOKENIZATION).apply_mask(batch, P, torch.Generator().manual_seed(seed))
    _common_invariants(batch, out)
    for m in batch.modalities:
        tokens = _tokens(out, m).flatten(1)
        n = tokens.shape[1]
        assert torch.all((tokens == 0).sum(1) <= n // 2) and torch.all((tokens == 2).sum(1) <= n // 2)
    s2 = _tokens(out, "sentinel2_l2a").flatten(1)  # nothing missing: exact counts
    assert torch.all((s2 == 0).sum(1) == s2.shape[1] // 2) and torch.all((s2 == 2).sum(1) == s2.shape[1] // 2)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_modality_cross_random_invariants(seed):
    batch = _batch(seed=seed)
    config = get_experiment("single_bandset_cross_random_masked_neg").masking
    out = masking.build(config, TOKENIZATION).apply_mask(batch, P, torch.Generator().manual_seed(seed))
    _common_invariants(batch, out)
    for m in MAPS:
        assert not torch.any(_tokens(out, m) == MaskValue.ONLINE_ENCODER), f"{m} is decode-only"
    for b in range(batch.batch_size):
        present = [m for m in ENCODABLE if bool((_tokens(out, m)[b] != 3).any())]
        encoded = [m for m in ENCODABLE if bool((_tokens(out, m)[b] == 0).any())]
        assert min(2, len(present)) <= len(encoded) <= len(present)
        for m in MAPS:  # maps keep their random-step decoder tokens: half of the present ones
            t = _tokens(out, m)[b]
            if bool((t != 3).all()):
                assert int((t == 2).sum()) == t.numel() // 2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_with_decode_invariants(seed):
    batch = _batch(seed=seed)
    config = get_experiment("single_bandset_random_decode_masked_neg").masking
    out = masking.build(config, TOKENIZATION).apply_mask(batch, P, torch.Generator().manual_seed(seed))
    _common_invariants(batch, out)
    for m in MAPS:
        mask = getattr(out, f"{m}_mask")
        assert torch.all((mask == 2) | (mask == 3)), "every present token of a decode-only modality is DECODER"
    for b in range(batch.batch_size):
        listed = [m for m in ENCODABLE if bool((_tokens(out, m)[b] != 3).any())]
        enc_role = [m for m in listed if bool((_tokens(out, m)[b] == 0).any()) and not bool((_tokens(out, m)[b] == 2).any())]
        dec_role = [m for m in listed if bool((_tokens(out, m)[b] == 2).any()) and not bool((_tokens(out, m)[b] == 0).any())]
        if len(listed) >= 2:
            assert len(enc_role) == -(-len(listed) // 2) and len(dec_role) == len(listed) - len(enc_role)
            for m in enc_role:
                t = _tokens(out, m)[b]
                assert int((t == 0).sum()) == int((t != 3).sum()) // 2


def test_random_time_with_decode_time_mode_uses_whole_timesteps():
    batch = _batch()
    config = dict(get_experiment("single_bandset_all12_random_band_dropout_ndvi_era5_random_time_decode_masked_neg").masking)
    config["random_ratio"] = 0.0  # always time mode
    config["only_decode_modalities"] = MAPS
    out = masking.build(config, TOKENIZATION).apply_mask(batch, P, torch.Generator().manual_seed(0))
    _common_invariants(batch, out)
    for b in range(batch.batch_size):
        s2 = _tokens(out, "sentinel2_l2a")[b, ..., 0]  # [h, w, T]
        per_step = [set(s2[:, :, t].unique().tolist()) for t in range(s2.shape[2])]
        assert all(len(v) == 1 for v in per_step), "a timestep is entirely one role"


def test_build_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown masking type"):
        masking.build({"type": "space_time"})
    with pytest.raises(ValueError, match="bad arguments"):
        masking.build({"type": "random", "ratio": 0.5})
    with pytest.raises(ValueError, match="encode_ratio"):
        masking.build({"type": "random", "encode_ratio": 1.5})
    with pytest.raises(ValueError, match="min_encoded_bandsets"):
        masking.build({"type": "modality_cross_random", "min_encoded_bandsets": 1})
    with pytest.raises(ValueError, match="patch_size"):
        masking.build({"type": "random"}).apply_mask(_batch(), 0)
