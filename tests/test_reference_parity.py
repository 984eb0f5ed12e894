"""Optional: compare directly against the reference package when it is importable.

Install it next to mim-fast with ``pip install --no-deps olmoearth-pretrain==0.1.2 einops``
(the loss and masking modules also need ``ai2-olmo-core``, ``class-registry`` and
``setuptools<81``). Without it this module is skipped.
"""

import warnings

import pytest
import torch

flexi_vit = pytest.importorskip("olmoearth_pretrain.nn.flexi_vit")
warnings.filterwarnings("ignore", module="olmoearth_pretrain")
from olmoearth_pretrain.data.constants import Modality  # noqa: E402
from olmoearth_pretrain.datatypes import MaskedOlmoEarthSample  # noqa: E402
from olmoearth_pretrain.nn.latent_mim import LatentMIM as ReferenceLatentMIM  # noqa: E402
from olmoearth_pretrain.nn.tokenization import ModalityTokenization, TokenizationConfig  # noqa: E402

from mim_fast import losses, masking  # noqa: E402
from mim_fast.bench.stage import make_batch  # noqa: E402
from mim_fast.compat import load_olmoearth_state_dict  # noqa: E402
from mim_fast.data import MaskedBatch  # noqa: E402
from mim_fast.experiments import build_model, get_experiment  # noqa: E402

KEY = "single_bandset_all12_random_band_dropout_cross_random_masked_neg"


def _reference_model(exp):
    config = TokenizationConfig(overrides={m: ModalityTokenization(band_groups=g) for m, g in exp.tokenization.items()})
    specs = [Modality.get(m) for m in exp.modalities]
    encoder = flexi_vit.Encoder(
        embedding_size=128, max_patch_size=8, min_patch_size=1, num_heads=8, mlp_ratio=4.0, depth=4, drop_path=0.0,
        supported_modalities=specs, max_sequence_length=12, tokenization_config=config,
    )  # fmt: skip
    decoder = flexi_vit.Predictor(
        supported_modalities=specs, encoder_embedding_size=128, decoder_embedding_size=128, depth=4, mlp_ratio=4.0,
        num_heads=8, max_sequence_length=12, tokenization_config=config,
    )  # fmt: skip
    return ReferenceLatentMIM(encoder, decoder)


def _masked_sample(exp, patch=2, batch=4):
    data = make_batch(batch, patch, 3, 3)
    ts = torch.stack([torch.randint(1, 28, (batch, 3)), torch.randint(0, 12, (batch, 3)), torch.full((batch, 3), 2022)], -1)
    raw = {m: getattr(data, m) for m in data.modalities}
    strategy = masking.build(exp.masking, tokenization=exp.tokenization)
    return strategy.apply_mask(MaskedBatch(timestamps=ts, **raw), patch, torch.Generator().manual_seed(0)), patch


def test_reference_state_dict_loads_and_gives_the_same_outputs_and_loss():
    torch.manual_seed(0)
    exp = get_experiment(KEY)
    ref = _reference_model(exp)
    state = ref.state_dict()
    for k in state:  # zero-initialised parameters get values so they are compared too
        if "channel_embeddings" in k or "mask_token" in k:
            state[k] = torch.randn_like(state[k])
    ref.load_state_dict(state)
    ours = build_model(KEY, "nano", drop_path=0.0, band_dropout_rate=0.0)
    load_olmoearth_state_dict(ours, state)
    batch, patch = _masked_sample(exp)
    sample = MaskedOlmoEarthSample(**batch.as_dict())
    ref.train()
    ours.train()
    r_latent, r_decoded, r_pooled, _, _ = ref(sample, patch)
    o_latent, o_decoded, o_pooled, _, _ = ours(sample, patch)
    for m in r_decoded.modalities:
        rel = (getattr(r_decoded, m) - getattr(o_decoded, m)).norm() / getattr(r_decoded, m).norm()
        assert rel <= 1e-4, m
    assert (r_pooled - o_pooled).norm() / r_pooled.norm() <= 1e-4
    ref_loss_module = pytest.importorskip("olmoearth_pretrain.train.loss")
    cfg = {k: v for k, v in exp.loss.items() if k != "type"}
    with torch.no_grad():
        targets = ref.target_encoder(sample.unmask(), patch_size=patch, token_exit_cfg={m: 0 for m in exp.modalities})
    want = ref_loss_module.ModalityPatchDiscriminationMaskedNegatives(**cfg).compute(r_decoded, targets["tokens_and_masks"])
    got = ours.training_loss(batch, patch, losses.build(exp.loss)).loss
    assert abs(float(got) - float(want)) <= 1e-4 * abs(float(want))


@pytest.mark.parametrize(
    "key",
    ["single_bandset_cross_random_masked_neg", "single_bandset_random_decode_masked_neg",
     "single_bandset_all12_random_band_dropout_ndvi_era5_random_time_decode_masked_neg"],
)  # fmt: skip
def test_masks_match_the_reference_distribution(key):
    """Value fractions per modality and encoded band sets per sample over 1024 samples."""
    masking_module = pytest.importorskip("olmoearth_pretrain.train.masking")
    import numpy as np
    from olmoearth_pretrain.datatypes import OlmoEarthSample

    from mim_fast.data import MISSING_VALUE

    exp = get_experiment(key)
    base = make_batch(128, 4, 4, 6, seed=3)
    data = {m: getattr(base, m).clone() for m in base.modalities}
    data["sentinel1"][:, :, :, 3:] = MISSING_VALUE
    data["landsat"][:40] = MISSING_VALUE
    data["cdl"][::3] = MISSING_VALUE
    config = dict(exp.masking)
    config["only_decode_modalities"] = [m for m in config["only_decode_modalities"] if m in data]
    tokenization = TokenizationConfig(overrides={m: ModalityTokenization(band_groups=g) for m, g in exp.tokenization.items() if m in ("sentinel2_l2a", "landsat")})
    ref = masking_module.MaskingConfig(strategy_config=dict(config), tokenization_config=tokenization).build()
    ours = masking.build(config, tokenization={m: g for m, g in exp.tokenization.items() if m in ("sentinel2_l2a", "landsat")})
    torch.manual_seed(0)
    np.random.seed(0)
    gen = torch.Generator().manual_seed(1)
    fractions = {"ref": {}, "ours": {}}
    encoded = {"ref": np.zeros(4), "ours": np.zeros(4)}
    for _ in range(8):
        outs = {
            "ref": ref.apply_mask(OlmoEarthSample(timestamps=base.timestamps, **data), patch_size=4),
            "ours": ours.apply_mask(MaskedBatch(timestamps=base.timestamps, **data), 4, generator=gen),
        }
        for name, out in outs.items():
            k = torch.zeros(128, dtype=torch.long)
            for m in data:
                codes = getattr(out, f"{m}_mask")[:, ::4, ::4]
                fractions[name][m] = fractions[name].get(m, 0) + torch.bincount(codes.flatten(), minlength=4).numpy()
                if m in ("sentinel2_l2a", "sentinel1", "landsat"):
                    k += (codes == 0).flatten(1).any(1).long()
            encoded[name] += np.bincount(k.numpy(), minlength=4)
    for m in data:
        a = fractions["ref"][m] / fractions["ref"][m].sum()
        b = fractions["ours"][m] / fractions["ours"][m].sum()
        assert np.abs(a - b).max() < 0.03, (m, a, b)
    assert np.abs(encoded["ref"] / 1024 - encoded["ours"] / 1024).max() < 0.07, encoded
