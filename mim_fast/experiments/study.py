"""The 13 experiments of the single-bandset masked-negatives study (model, masking, loss).

Settings shared by every experiment and the per-row settings follow the study's table:
modalities, tokenization (S2 / Landsat band groups), masking strategy, decode-only
modalities (= the loss's masked-negative modalities), band dropout.
"""

from dataclasses import dataclass, field

from ..data.modalities import get_modality

BASE_MODALITIES = (
    "sentinel2_l2a", "sentinel1", "landsat", "worldcover", "srtm", "openstreetmap_raster",
    "wri_canopy_height_map", "cdl", "worldcereal",
)  # fmt: skip
MAPS = ("worldcover", "srtm", "openstreetmap_raster", "wri_canopy_height_map", "cdl", "worldcereal")

S2_ALL12 = [list(get_modality("sentinel2_l2a").band_order)]
S2_NO_60M = [list(get_modality("sentinel2_l2a").band_order[:10])]
S2_10M_20M = [list(g) for g in get_modality("sentinel2_l2a").band_sets[:2]]
LANDSAT_SINGLE = [list(get_modality("landsat").band_order)]
NDVI_SINGLE = [["ndvi"]]


@dataclass(frozen=True)
class Experiment:
    """One experiment: what the model, the masking and the loss are built from."""

    key: str
    tokenization: dict = field(default_factory=dict)
    masking: dict = field(default_factory=dict)
    decode_only: tuple = MAPS
    extra_modalities: tuple = ()
    band_dropout_rate: float = 0.0
    random_band_dropout: bool = False

    @property
    def modalities(self) -> list[str]:
        return list(BASE_MODALITIES) + list(self.extra_modalities)

    @property
    def loss(self) -> dict:
        return {
            "type": "modality_patch_discrimination_masked_negatives",
            "tau": 0.1,
            "same_target_threshold": 0.999,
            "mask_negatives_for_modalities": list(self.decode_only),
        }

    @property
    def contrastive(self) -> dict:
        return {"type": "InfoNCE", "weight": 0.1}


def _cross(decode_only) -> dict:
    return {
        "type": "modality_cross_random", "encode_ratio": 0.5, "decode_ratio": 0.5,
        "allow_encoding_decoding_same_bandset": True, "only_decode_modalities": list(decode_only),
    }  # fmt: skip


def _random_decode(decode_only) -> dict:
    return {"type": "random_with_decode", "encode_ratio": 0.5, "decode_ratio": 0.5, "only_decode_modalities": list(decode_only)}


def _random_time_decode(decode_only) -> dict:
    return {
        "type": "random_time_with_decode", "encode_ratio": 0.5, "decode_ratio": 0.5, "random_ratio": 0.5,
        "only_decode_modalities": list(decode_only),
    }  # fmt: skip


def _experiment(key, s2, masking_builder, decode_only=MAPS, extra=(), rate=0.0, random=False, ndvi=False):
    tokenization = {"sentinel2_l2a": s2, "landsat": LANDSAT_SINGLE}
    if ndvi:
        tokenization["ndvi"] = NDVI_SINGLE
    return Experiment(key, tokenization, masking_builder(decode_only), tuple(decode_only), tuple(extra), rate, random)


_ERA5 = MAPS + ("era5_10",)
_NDVI = MAPS + ("ndvi",)
_NDVI_ERA5 = MAPS + ("ndvi", "era5_10")

EXPERIMENTS: dict[str, Experiment] = {
    e.key: e
    for e in (
        _experiment("single_bandset_cross_random_masked_neg", S2_ALL12, _cross),
        _experiment("single_bandset_random_decode_masked_neg", S2_ALL12, _random_decode),
        _experiment("single_bandset_band_dropout_0.3_cross_random_masked_neg", S2_ALL12, _cross, rate=0.3),
        _experiment("single_bandset_band_dropout_0.5_cross_random_masked_neg", S2_ALL12, _cross, rate=0.5),
        _experiment("two_bandset_cross_random_masked_neg", S2_10M_20M, _cross),
        _experiment("single_bandset_random_band_dropout_cross_random_masked_neg", S2_NO_60M, _cross, rate=0.3, random=True),
        _experiment("single_bandset_all12_random_band_dropout_cross_random_masked_neg", S2_ALL12, _cross, rate=0.3, random=True),
        _experiment("single_bandset_all12_random_band_dropout_era5_random_decode_masked_neg", S2_ALL12, _random_decode,
                    _ERA5, ("era5_10",), 0.3, True),
        _experiment("single_bandset_all12_random_band_dropout_era5_cross_random_masked_neg", S2_ALL12, _cross,
                    _ERA5, ("era5_10",), 0.3, True),
        _experiment("single_bandset_all12_random_band_dropout_random_decode_masked_neg", S2_ALL12, _random_decode,
                    rate=0.3, random=True),
        _experiment("single_bandset_all12_random_band_dropout_ndvi_random_decode_masked_neg", S2_ALL12, _random_decode,
                    _NDVI, ("ndvi",), 0.3, True, ndvi=True),
        _experiment("single_bandset_all12_random_band_dropout_ndvi_era5_random_decode_masked_neg", S2_ALL12,
                    _random_decode, _NDVI_ERA5, ("era5_10", "ndvi"), 0.3, True, ndvi=True),
        _experiment("single_bandset_all12_random_band_dropout_ndvi_era5_random_time_decode_masked_neg", S2_ALL12,
                    _random_time_decode, _NDVI_ERA5, ("era5_10", "ndvi"), 0.3, True, ndvi=True),
    )  # fmt: skip
}
"""The study's experiment keys (the reference's ``EXPERIMENT`` names)."""

DEFAULT_EXPERIMENT = "single_bandset_cross_random_masked_neg"


def get_experiment(key: str) -> Experiment:
    if key not in EXPERIMENTS:
        raise ValueError(f"experiment: unknown key {key!r}; known keys:\n  " + "\n  ".join(EXPERIMENTS))
    return EXPERIMENTS[key]
