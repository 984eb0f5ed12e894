"""Per-modality token containers with the reference's field names."""

import torch

# Modality order of the reference's TokensAndMasks (and of its flattening).
TOKEN_FIELD_ORDER = (
    "sentinel2_l2a", "sentinel1", "worldcover", "worldcover_onehot", "openstreetmap_raster", "srtm", "landsat",
    "naip", "naip_10", "gse", "cdl", "worldpop", "worldcereal", "wri_canopy_height_map", "era5_10", "ndvi",
    "eurocrops", "latlon",
)  # fmt: skip


class TokensAndMasks:
    """Tokens and token-level masks per modality: ``.<modality>`` and ``.<modality>_mask``.

    Spatial tokens ``[B, H', W', T, n_band_sets, D]``, time-only ``[B, T, n_band_sets, D]``,
    static ``[B, n_band_sets, D]``; masks have the same shape without ``D``. Absent
    modalities read as None. Accepted wherever the reference's ``TokensAndMasks`` is.
    """

    def __init__(self, **fields):
        known = set(TOKEN_FIELD_ORDER) | {f"{m}_mask" for m in TOKEN_FIELD_ORDER}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"TokensAndMasks: unknown fields {unknown}")
        self._fields = {k: v for k, v in fields.items() if v is not None}

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        base = name[: -len("_mask")] if name.endswith("_mask") else name
        if base in TOKEN_FIELD_ORDER:
            return self._fields.get(name)
        raise AttributeError(f"TokensAndMasks has no field {name!r}")

    @property
    def modalities(self) -> list[str]:
        """Present modalities in the reference's field order."""
        return [m for m in TOKEN_FIELD_ORDER if m in self._fields]

    def as_dict(self) -> dict[str, torch.Tensor]:
        return dict(self._fields)

    def flatten(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens [B, N, D], mask [B, N])`` concatenated over modalities in field order."""
        tokens = [self._fields[m].flatten(1, -2) for m in self.modalities]
        masks = [self._fields[f"{m}_mask"].flatten(1) for m in self.modalities]
        return torch.cat(tokens, dim=1), torch.cat(masks, dim=1)

    def __repr__(self) -> str:
        return "TokensAndMasks(" + ", ".join(f"{k}={list(v.shape)}" for k, v in self._fields.items()) + ")"


def field(container, name):
    """``container.<name>`` for attribute containers, ``container[name]`` for dicts (None if absent)."""
    if isinstance(container, dict):
        return container.get(name)
    return getattr(container, name, None)


def present_modalities(container) -> list[str]:
    """Modalities of a TokensAndMasks-like container or dict ``{m: tokens, m + "_mask": mask}``."""
    if isinstance(container, dict):
        return [m for m in TOKEN_FIELD_ORDER if m in container and f"{m}_mask" in container]
    return [str(m) for m in container.modalities]
