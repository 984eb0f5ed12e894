"""The study's experiments by key, and models built for them."""

from ..nn import Encoder, LatentMIM, Predictor
from .sizes import MLP_RATIO, MODEL_SIZES, resolve_size
from .study import DEFAULT_EXPERIMENT, EXPERIMENTS, Experiment, get_experiment


def build_model(key: str, size: str = "base", drop_path: float | None = None, band_dropout_rate: float | None = None,
                projection_only_target: bool = True, random_band_dropout: bool | None = None,
                modalities: list | None = None, tokenization: dict | None = None) -> LatentMIM:  # fmt: skip
    """The LatentMIM of an experiment at a model size.

    Encoder: the experiment's modalities and tokenization, ``max_patch_size`` 8,
    ``min_patch_size`` 1, ``max_sequence_length`` 12, drop path 0.1 (or ``drop_path``), band
    dropout as the experiment configures it (or ``band_dropout_rate``), switched on for the
    online encoder only (the target is frozen without it). Decoder: pure cross-attention,
    drop path 0.

    Args:
        key: experiment key (see ``EXPERIMENTS``).
        size: ``nano``, ``tiny``, ``base``, ``large`` (the shallow-decoder variants the study
            uses for tiny/base/large) or any full size name of ``MODEL_SIZES``.
        random_band_dropout, modalities, tokenization: override the experiment's values.
    """
    exp = get_experiment(key)
    modalities = list(exp.modalities if modalities is None else modalities)
    tokenization = exp.tokenization if tokenization is None else tokenization
    random_band_dropout = exp.random_band_dropout if random_band_dropout is None else random_band_dropout
    dims = resolve_size(size)
    encoder = Encoder(
        embedding_size=dims["enc_dim"], max_patch_size=8, min_patch_size=1, num_heads=dims["enc_heads"],
        mlp_ratio=MLP_RATIO, depth=dims["enc_depth"], drop_path=0.1 if drop_path is None else drop_path,
        supported_modalities=modalities, max_sequence_length=12, tokenization_config=tokenization,
        band_dropout_rate=exp.band_dropout_rate if band_dropout_rate is None else band_dropout_rate,
        random_band_dropout=random_band_dropout,
    )  # fmt: skip
    decoder = Predictor(
        supported_modalities=modalities, encoder_embedding_size=dims["enc_dim"],
        decoder_embedding_size=dims["dec_dim"], depth=dims["dec_depth"], mlp_ratio=MLP_RATIO,
        num_heads=dims["dec_heads"], max_sequence_length=12, tokenization_config=tokenization,
    )  # fmt: skip
    model = LatentMIM(encoder, decoder, projection_only_target=projection_only_target)
    model.encoder.enable_band_dropout()
    return model


__all__ = ["DEFAULT_EXPERIMENT", "EXPERIMENTS", "Experiment", "MODEL_SIZES", "build_model", "get_experiment"]
