"""FlexiPatchEmbed / MultiModalPatchEmbeddings: reference layout, forward, fused forward_packed."""

import pytest
import torch

import mim_fast
from mim_fast import MaskValue
from mim_fast.data import MaskedBatch
from mim_fast.nn import FlexiPatchEmbed, MultiModalPatchEmbeddings, TokenizationConfig

MODALITIES = ["sentinel2_l2a", "sentinel1", "landsat", "worldcover", "openstreetmap_raster", "era5_10"]
TWO_S2_SETS = {"sentinel2_l2a": [["B02", "B03", "B04", "B08"], ["B05", "B06", "B07", "B8A", "B11", "B12"]]}
DIM = 16


def make_batch(patch, hw_p=3, time=2, batch=3, seed=0, dtype=torch.float64, s2_sets=2):
    """A batch with multi-temporal, static and non-spatial modalities; masks constant per patch."""
    gen = torch.Generator().manual_seed(seed)
    size = hw_p * patch

    def spatial(channels, steps, sets):
        data = torch.randn(batch, size, size, steps, channels, generator=gen, dtype=dtype)
        codes = torch.randint(0, 4, (batch, hw_p, hw_p, steps, sets), generator=gen)
        return data, codes.repeat_interleave(patch, 1).repeat_interleave(patch, 2)

    s2, s2_mask = spatial(12, time, s2_sets)
    s1, s1_mask = spatial(2, time, 1)
    landsat, landsat_mask = spatial(11, time, 2)
    wc, wc_mask = spatial(1, 1, 1)
    osm, osm_mask = spatial(30, 1, 1)
    era5 = torch.randn(batch, time, 6, generator=gen, dtype=dtype)
    era5_mask = torch.randint(0, 4, (batch, time, 1), generator=gen)
    return MaskedBatch(
        timestamps=torch.zeros(batch, time, 3, dtype=torch.long),
        sentinel2_l2a=s2, sentinel2_l2a_mask=s2_mask, sentinel1=s1, sentinel1_mask=s1_mask,
        landsat=landsat, landsat_mask=landsat_mask, worldcover=wc, worldcover_mask=wc_mask,
        openstreetmap_raster=osm, openstreetmap_raster_mask=osm_mask, era5_10=era5, era5_10_mask=era5_mask,
    )  # fmt: skip


def make_module(**kwargs):
    torch.manual_seed(0)
    kwargs.setdefault("tokenization_config", TWO_S2_SETS)
    return MultiModalPatchEmbeddings(MODALITIES, 8, DIM, **kwargs).double()


def dense_then_gather(module, batch, patch, select, generator=None):
    """The reference pipeline: per-modality dict -> flatten -> concatenate -> gather."""
    out = module(batch, patch, generator=generator)
    b = batch.batch_size
    tokens = torch.cat([out[m].reshape(b, -1, DIM) for m in batch.modalities], dim=1)
    codes = torch.cat([out[m + "_mask"].reshape(b, -1) for m in batch.modalities], dim=1)
    return mim_fast.masked_gather(tokens, codes == select)


def test_state_dict_keys_follow_the_reference_layout():
    module = make_module()
    keys = set(module.state_dict())
    assert "per_modality_embeddings.sentinel2_l2a.sentinel2_l2a__0.proj.weight" in keys
    assert "per_modality_embeddings.sentinel2_l2a.sentinel2_l2a__1.proj.bias" in keys
    assert "per_modality_embeddings.era5_10.era5_10__0.weight" in keys
    assert not any(k.endswith("_buffer") for k in keys), "band-index buffers are not persistent"
    assert module.per_modality_embeddings["landsat"]["landsat__1"].proj.weight.shape == (DIM, 8 * 8 * 10)
    assert module.per_modality_embeddings["sentinel2_l2a"]["sentinel2_l2a__1"].proj.in_features == 8 * 8 * 6
    assert torch.equal(module.get_buffer("sentinel2_l2a__1_buffer"), torch.arange(4, 10))


@pytest.mark.parametrize("patch", [1, 2, 3, 4, 5, 6, 7, 8])
def test_forward_shapes_and_forward_packed_equals_reference_pipeline(patch):
    module = make_module()
    batch = make_batch(patch, hw_p=2 if patch > 4 else 3)
    out = module(batch, patch)
    hw = batch.sentinel2_l2a.shape[1] // patch
    assert out["sentinel2_l2a"].shape == (3, hw, hw, 2, 2, DIM)
    assert out["worldcover"].shape == (3, hw, hw, 1, 1, DIM)
    assert out["era5_10"].shape == (3, 2, 1, DIM)
    assert out["landsat_mask"].shape == (3, hw, hw, 2, 2)
    for select in (MaskValue.ONLINE_ENCODER, MaskValue.DECODER):
        packed = module.forward_packed(batch, patch, select=select)
        want = dense_then_gather(module, batch, patch, select)
        assert torch.equal(packed.indices, want.indices)
        assert torch.equal(packed.mask, want.mask)
        torch.testing.assert_close(packed.tokens, want.tokens, atol=1e-11, rtol=0)


def test_forward_packed_gradients_match_reference_pipeline():
    module = make_module()
    batch = make_batch(3)
    packed = module.forward_packed(batch, 3, select=0)
    probe = torch.randn_like(packed.tokens)
    params = list(module.parameters())
    got = torch.autograd.grad((packed.tokens * probe).sum(), params, allow_unused=True, materialize_grads=True)
    want_tokens = dense_then_gather(module, batch, 3, 0).tokens
    want = torch.autograd.grad((want_tokens * probe).sum(), params, allow_unused=True, materialize_grads=True)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-10, rtol=1e-9)


def test_band_dropout_train_mode_only_and_same_draws_in_both_paths():
    module = make_module(band_dropout_rate=0.5, random_band_dropout=True)
    batch = make_batch(2)
    module.eval()
    clean = module.forward_packed(batch, 2, select=0)
    torch.testing.assert_close(clean.tokens, dense_then_gather(module, batch, 2, 0).tokens, atol=1e-11, rtol=0)
    module.train()
    dropped = module.forward_packed(batch, 2, select=0, generator=torch.Generator().manual_seed(5))
    want = dense_then_gather(module, batch, 2, 0, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(dropped.tokens, want.tokens, atol=1e-11, rtol=0)
    assert not torch.allclose(dropped.tokens, clean.tokens), "training mode with rate 0.5 must drop bands"


def test_band_dropout_skips_single_band_sets_and_unlisted_modalities():
    batch = make_batch(8, hw_p=2)
    module = make_module(band_dropout_rate=1.0, band_dropout_modalities=["sentinel1"])
    module.eval()
    clean = module(batch, 8)
    module.train()
    dropped = module(batch, 8, generator=torch.Generator().manual_seed(1))
    for name in ("sentinel2_l2a", "landsat", "worldcover", "openstreetmap_raster", "era5_10"):
        torch.testing.assert_close(dropped[name], clean[name], atol=0, rtol=0)
    assert not torch.equal(dropped["sentinel1"], clean["sentinel1"])

    module = make_module(band_dropout_rate=1.0)
    module.train()
    dropped = module(batch, 8, generator=torch.Generator().manual_seed(1))
    # Single-band modalities are never dropped, every multi-band set is.
    torch.testing.assert_close(dropped["worldcover"], clean["worldcover"], atol=0, rtol=0)
    assert not torch.equal(dropped["openstreetmap_raster"], clean["openstreetmap_raster"])
    assert not torch.equal(dropped["era5_10"], clean["era5_10"])


def test_tokenization_config_forms_agree():
    class ReferenceLike:  # the reference's config: `overrides` values with `band_groups`
        def __init__(self, groups):
            self.overrides = {m: type("MT", (), {"band_groups": g})() for m, g in groups.items()}

    a = make_module(tokenization_config=TWO_S2_SETS)
    b = make_module(tokenization_config=TokenizationConfig(TWO_S2_SETS))
    c = make_module(tokenization_config=ReferenceLike(TWO_S2_SETS))
    assert a._band_sets == b._band_sets == c._band_sets
    assert a._band_sets["sentinel2_l2a"] == [[0, 1, 2, 3], [4, 5, 6, 7, 8, 9]]
    assert a._band_sets["landsat"] == [[0], list(range(1, 11))]


def test_band_set_subset_selects_channels():
    config = {"sentinel2_l2a": [["B04", "B02"]]}
    module = MultiModalPatchEmbeddings(["sentinel2_l2a"], 8, DIM, tokenization_config=config).double()
    batch = make_batch(4, hw_p=2, s2_sets=1)
    batch = MaskedBatch(sentinel2_l2a=batch.sentinel2_l2a, sentinel2_l2a_mask=batch.sentinel2_l2a_mask)
    layer = module.per_modality_embeddings["sentinel2_l2a"]["sentinel2_l2a__0"]
    direct = layer(batch.sentinel2_l2a[..., [2, 0]], 4)
    torch.testing.assert_close(module(batch, 4)["sentinel2_l2a"][..., 0, :], direct, atol=0, rtol=0)
    packed = module.forward_packed(batch, 4, select=0)
    want = dense_then_gather(module, batch, 4, 0)
    torch.testing.assert_close(packed.tokens, want.tokens, atol=1e-11, rtol=0)


def test_flexi_patch_embed_matches_patch_embed_and_reference_sizes():
    layer = FlexiPatchEmbed("sentinel2_l2a", 8, in_chans=3, embedding_size=DIM).double()
    assert layer.proj.weight.shape == (DIM, 8 * 8 * 3)
    x = torch.randn(2, 12, 12, 2, 3, dtype=torch.float64)
    out = layer(x, patch_size=4)
    assert out.shape == (2, 3, 3, 2, DIM)
    naip = FlexiPatchEmbed("naip_10", 8, in_chans=4, embedding_size=DIM)
    assert naip.patch_size == 32 and naip.requested(2) == 8


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(tokenization_config={"sentinel2_l2a": [["B99"]]}), ValueError, "B99"),
        (dict(tokenization_config={"not_a_modality": [["B1"]]}), ValueError, "not_a_modality"),
        (dict(tokenization_config=42), TypeError, "tokenization_config"),
        (dict(band_dropout_rate=2.0), ValueError, "band_dropout_rate"),
        (dict(use_linear_patch_embed=False), NotImplementedError, "Conv2d"),
        (dict(patch_embed_hidden_sizes=[8]), NotImplementedError, "hidden"),
    ],
)
def test_bad_configuration_is_a_clear_error(kwargs, error, match):
    with pytest.raises(error, match=match):
        MultiModalPatchEmbeddings(["sentinel2_l2a"], 8, DIM, **kwargs)


def test_unknown_batch_field_and_no_supported_modality():
    with pytest.raises(ValueError, match="unknown fields"):
        MaskedBatch(sentinel3=torch.zeros(1))
    module = MultiModalPatchEmbeddings(["srtm"], 8, DIM)
    with pytest.raises(ValueError, match="none of its modalities"):
        module.forward_packed(make_batch(2), 2)


def test_parity_with_the_reference_package():
    """Optional: the reference's own modules, when installed, give the same tokens."""
    pytest.importorskip("einops")
    flexi_vit = pytest.importorskip("olmoearth_pretrain.nn.flexi_vit")
    datatypes = pytest.importorskip("olmoearth_pretrain.datatypes")
    tokenization = pytest.importorskip("olmoearth_pretrain.nn.tokenization")
    config = tokenization.TokenizationConfig(
        overrides={m: tokenization.ModalityTokenization(band_groups=g) for m, g in TWO_S2_SETS.items()}
    )
    torch.manual_seed(0)
    ref = flexi_vit.MultiModalPatchEmbeddings(MODALITIES, 8, DIM, tokenization_config=config)
    ours = MultiModalPatchEmbeddings(MODALITIES, 8, DIM, tokenization_config=config)
    ours.load_state_dict(ref.state_dict())
    for patch in (1, 3, 8):
        batch = make_batch(patch, hw_p=2, dtype=torch.float32)
        sample = datatypes.MaskedOlmoEarthSample(**batch.as_dict())
        want = ref(sample, patch)
        got = ours(sample, patch)
        assert sorted(want) == sorted(got)
        for key in want:
            torch.testing.assert_close(got[key].float(), want[key].float(), atol=2e-5, rtol=1e-5)
        b = batch.batch_size
        tokens = torch.cat([want[m].reshape(b, -1, DIM) for m in sample.modalities], 1)
        codes = torch.cat([want[m + "_mask"].reshape(b, -1) for m in sample.modalities], 1)
        packed_tokens, _, packed_mask, seqlens, _ = flexi_vit.Encoder.remove_masked_tokens(tokens, codes == 0)
        packed = ours.forward_packed(sample, patch, select=0)
        assert torch.equal(packed.seqlens, seqlens)
        assert torch.equal(packed.mask, packed_mask.bool())
        torch.testing.assert_close(packed.tokens, packed_tokens, atol=2e-5, rtol=1e-5)
