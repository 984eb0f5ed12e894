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
