"""LatentMIM modules: encodings test vectors, state_dict layout, the packed fast paths against
the dense ones, and the properties of the decoder."""

import pytest
import torch

from mim_fast import MaskValue, losses, masking
from mim_fast.bench.stage import make_batch
from mim_fast.compat import convert_olmoearth_state_dict, load_olmoearth_state_dict
from mim_fast.experiments import EXPERIMENTS, build_model, get_experiment
from mim_fast.nn.encodings import month_table, sincos_1d, sincos_2d

KEY = "single_bandset_all12_random_band_dropout_cross_random_masked_neg"


def test_sincos_month_and_spatial_test_vectors():
    row = sincos_1d(torch.arange(4), 8)[1]
    torch.testing.assert_close(row, torch.tensor([0.8415, 0.5332, 0.3110, 0.1769, 0.5403, 0.8460, 0.9504, 0.9842]),
                               atol=1e-4, rtol=0)  # fmt: skip
    torch.testing.assert_close(month_table(2)[3], torch.tensor([1.0, -4.37e-8]), atol=1e-6, rtol=0)
    # n = 4, grid scaled by g = 2: position (i = 0, j = 1) -> [sin 2, cos 2, sin 0, cos 0]
    code = sincos_2d(torch.tensor([0.0]) * 2, torch.tensor([1.0]) * 2, 4)[0]
    torch.testing.assert_close(code, torch.tensor([0.9093, -0.4161, 0.0, 1.0]), atol=1e-4, rtol=0)


def _model_and_batch(seed=0, patch=2, hw_p=3, time=3, batch=4):
    torch.manual_seed(seed)
    model = build_model(KEY, "nano", drop_path=0.0, band_dropout_rate=0.0)
    for name, p in model.named_parameters():  # make zero-initialised parameters matter
        if "channel_embeddings" in name or "mask_token" in name:
            p.data.normal_()
    data = make_batch(batch, patch, hw_p, time, seed=seed)
    raw = {m: getattr(data, m) for m in data.modalities}
    ts = torch.stack([torch.randint(1, 28, (batch, time)), torch.randint(0, 12, (batch, time)),
                      torch.full((batch, time), 2021)], -1)  # fmt: skip
    exp = get_experiment(KEY)
    strategy = masking.build(exp.masking, tokenization=exp.tokenization)
    from mim_fast.data import MaskedBatch

    sample = strategy.apply_mask(MaskedBatch(timestamps=ts, **raw), patch, generator=torch.Generator().manual_seed(seed))
    return model, sample, patch, losses.build(exp.loss)


def test_state_dict_keys_follow_the_reference():
    model = build_model(KEY, "nano")
    keys = set(model.state_dict())
    for key in (
        "encoder.patch_embeddings.per_modality_embeddings.sentinel2_l2a.sentinel2_l2a__0.proj.weight",
        "encoder.composite_encodings.month_embed.weight",
        "encoder.composite_encodings.per_modality_channel_embeddings.landsat",
        "encoder.blocks.3.attn.q.weight",
        "encoder.blocks.0.mlp.fc2.bias",
        "encoder.norm.weight",
        "encoder.project_and_aggregate.projection.0.weight",
        "decoder.mask_token",
        "decoder.blocks.3.norm2.weight",
        "decoder.encoder_to_decoder_embed.weight",
        "decoder.to_output_embed.bias",
        "decoder.input_norm.weight",
        "target_encoder.patch_embeddings.per_modality_embeddings.cdl.cdl__0.proj.weight",
    ):
        assert key in keys, key
    assert not any(k.startswith("target_encoder.blocks") for k in keys), "projection-only target by default"
    assert all(not p.requires_grad for p in model.target_encoder.parameters())


@pytest.mark.parametrize("key", list(EXPERIMENTS))
def test_every_experiment_builds_and_runs_at_nano(key):
    torch.manual_seed(0)
    model = build_model(key, "nano")
    exp = get_experiment(key)
    assert model.encoder.supported_modality_names == exp.modalities
    assert model.encoder.patch_embeddings.band_dropout_rate == exp.band_dropout_rate
    assert model.target_encoder.patch_embeddings.band_dropout_rate == 0.0


def test_training_loss_equals_the_dense_reference_pipeline():
    model, sample, patch, loss = _model_and_batch()
    model.train()
    latent, decoded, pooled, _, _ = model(sample, patch)
    with torch.no_grad():
        targets = model.target_encoder(sample.unmask(), patch_size=patch, token_exit_cfg={m: 0 for m in sample.modalities})
    dense = loss.compute(decoded, targets["tokens_and_masks"])
    fast = model.training_loss(sample, patch, loss)
    torch.testing.assert_close(fast.loss, dense, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast.pooled, pooled, atol=1e-5, rtol=1e-5)
    params = [p for p in model.parameters() if p.requires_grad]
    g_dense = torch.autograd.grad(dense, params, allow_unused=True, materialize_grads=True)
    g_fast = torch.autograd.grad(fast.loss, params, allow_unused=True, materialize_grads=True)
    for a, b in zip(g_dense, g_fast):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)


def test_encoder_outputs_are_zero_off_the_encoder_tokens():
    model, sample, patch, _ = _model_and_batch()
    latent = model.encoder(sample, patch)["tokens_and_masks"]
    for m in latent.modalities:
        tokens, mask = getattr(latent, m), getattr(latent, f"{m}_mask")
        assert torch.all(tokens[mask != MaskValue.ONLINE_ENCODER] == 0)


def test_target_only_tokens_change_nothing():
    # At p == P: for p != P the antialiased resize reads 2 pixels around a token, so a
    # neighbour's pixels legitimately reach it (in the reference too).
    model, sample, patch, loss = _model_and_batch(patch=8, hw_p=2)
    model.eval()
    before = model.training_loss(sample, patch, loss).loss
    s2 = sample.sentinel2_l2a.clone()
    hidden = (sample.sentinel2_l2a_mask[..., 0] == MaskValue.TARGET_ENCODER_ONLY)
    s2[hidden] = 1e3  # pixels of target-only tokens
    after = model.training_loss(sample.replace(sentinel2_l2a=s2), patch, loss).loss
    torch.testing.assert_close(after, before, atol=0, rtol=0)


def test_permuting_decoder_queries_permutes_predictions():
    model, sample, patch, _ = _model_and_batch()
    model.eval()
    latent, packed, layout = model.encoder.encode_packed(sample, patch)
    c_len = packed.mask.shape[1]
    context = model.decoder.context(latent, packed.indices[:, :c_len], packed.mask, layout, sample.timestamps, patch)
    codes = torch.cat([m.reshape(m.shape[0], -1) for m in model.encoder.patch_embeddings.token_masks(sample, patch).values()], 1)
    from mim_fast import masked_gather

    queries = masked_gather(codes[..., None].float(), codes == MaskValue.DECODER)
    pred = model.decoder.decode_packed(context, packed.mask, queries, layout, sample.timestamps, patch)
    length = queries.mask.shape[1]
    perm = torch.randperm(length, generator=torch.Generator().manual_seed(3))
    shuffled = queries._replace(indices=torch.cat([queries.indices[:, :length][:, perm], queries.indices[:, length:]], 1),
                                mask=queries.mask[:, perm])  # fmt: skip
    pred2 = model.decoder.decode_packed(context, packed.mask, shuffled, layout, sample.timestamps, patch)
    valid = queries.mask[:, perm]
    torch.testing.assert_close(pred2[valid], pred[:, perm][valid], atol=1e-5, rtol=1e-5)


def test_eval_mode_masks_padded_keys():
    """A sample's encoding does not depend on the other samples of its batch (padding is masked)."""
    model, sample, patch, _ = _model_and_batch()
    model.eval()
    full = model.encoder(sample, patch)["tokens_and_masks"].sentinel2_l2a
    one = model.encoder(_slice(sample, 0, 1), patch)["tokens_and_masks"].sentinel2_l2a
    torch.testing.assert_close(one[0], full[0], atol=1e-5, rtol=1e-5)


def _slice(batch, start, stop):
    return batch.replace(**{k: v[start:stop] for k, v in batch.as_dict().items()})


def test_compat_converts_conv_patch_weights_and_drops_unused_target_parts():
    model = build_model(KEY, "nano")
    state = model.state_dict()
    key = "encoder.patch_embeddings.per_modality_embeddings.sentinel1.sentinel1__0.proj.weight"
    linear = state[key]
    d, c = linear.shape[0], 2
    conv = linear.reshape(d, 8, 8, c).permute(0, 3, 1, 2).contiguous()  # [D, C, P, P]
    reference_like = dict(state)
    reference_like[key] = conv
    reference_like["target_encoder.blocks.0.attn.q.weight"] = torch.zeros(3, 3)  # full-target extra
    converted = convert_olmoearth_state_dict(reference_like, model)
    assert "target_encoder.blocks.0.attn.q.weight" not in converted
    torch.testing.assert_close(converted[key], linear, atol=0, rtol=0)
    result = load_olmoearth_state_dict(model, reference_like)
    assert not result.missing_keys and not result.unexpected_keys


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="experiment"):
        build_model("no_such_experiment")
    with pytest.raises(ValueError, match="size"):
        build_model(KEY, "huge")
    with pytest.raises(ValueError, match="num_heads"):
        from mim_fast.nn import Attention

        Attention(10, 3)


def test_training_loss_with_max_len_matches_on_every_backend():
    """max_len larger than the token count, and the fixed-size (sync-free) work lists the
    Triton backend uses, give the same loss as the exact CPU path."""
    import mim_fast
    from mim_fast.bench.model import masked_batch

    torch.manual_seed(0)
    model = build_model(KEY, "nano", drop_path=0.0, band_dropout_rate=0.0)
    sample = masked_batch(2, 2, 1, batch=2)
    loss = losses.build(get_experiment(KEY).loss)
    want = model.training_loss(sample, 2, loss)
    with_len = model.training_loss(sample, 2, loss, max_len=64)
    torch.testing.assert_close(with_len.loss, want.loss, atol=1e-6, rtol=1e-6)
    if not mim_fast.backends.status("triton").available:
        pytest.skip("triton backend unavailable")
    with mim_fast.use_backend("triton"):
        fixed = model.training_loss(sample, 2, loss, max_len=64)
    torch.testing.assert_close(fixed.loss, want.loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fixed.pooled, want.pooled, atol=1e-5, rtol=1e-5)


def test_ema_target_update_and_projection_only_refusal():
    model = build_model(KEY, "nano", projection_only_target=False)
    online = model.encoder.patch_embeddings.per_modality_embeddings["sentinel1"]["sentinel1__0"].proj.weight
    target = model.target_encoder.patch_embeddings.per_modality_embeddings["sentinel1"]["sentinel1__0"].proj.weight
    torch.testing.assert_close(target, online)
    with torch.no_grad():
        online.add_(1.0)
    before = target.clone()
    model.update_target(0.75)
    torch.testing.assert_close(target, 0.75 * before + 0.25 * online)
    with pytest.raises(ValueError, match="projection_only_target"):
        build_model(KEY, "nano").update_target(0.5)
