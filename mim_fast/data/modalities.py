"""Modality registry: band order, default band sets and layout of every supported modality.

Channel order of a data array is always ``band_order`` (the concatenation of the default
band sets); a tokenization only chooses which channels each token embeds.

Layouts in a batch: space-time ``[B, H, W, T, C]``, space-only ``[B, H, W, 1, C]`` (the T
axis of size 1 is kept), time-only ``[B, T, C]``, static ``[B, C]``. Masks have the same
leading dims with the last one replaced by the number of band sets.
"""

from dataclasses import dataclass

MISSING_VALUE = -99999
"""Written into data arrays wherever data is absent."""


@dataclass(frozen=True)
class ModalitySpec:
    """One modality.

    name: field name in a batch (e.g. ``"sentinel2_l2a"``).
    band_sets: default band groups, each a tuple of band names, in channel order.
    multitemporal: has a time axis.
    spatial: varies in space (has H and W axes).
    image_tile_size_factor: pixels per 10 m pixel along each axis (4 for NAIP at 2.5 m);
        the base patch size and the requested patch size are multiplied by it.
    """

    name: str
    band_sets: tuple[tuple[str, ...], ...]
    multitemporal: bool
    spatial: bool = True
    image_tile_size_factor: int = 1

    @property
    def band_order(self) -> tuple[str, ...]:
        """All bands in data-channel order."""
        return tuple(b for group in self.band_sets for b in group)

    @property
    def num_bands(self) -> int:
        return len(self.band_order)

    @property
    def num_band_sets(self) -> int:
        """Number of default band sets."""
        return len(self.band_sets)

    @property
    def is_spatial(self) -> bool:
        return self.spatial

    @property
    def is_multitemporal(self) -> bool:
        return self.multitemporal


_OSM_BANDS = (
    "aerialway_pylon", "aerodrome", "airstrip", "amenity_fuel", "building", "chimney", "communications_tower",
    "crane", "flagpole", "fountain", "generator_wind", "helipad", "highway", "leisure", "lighthouse", "obelisk",
    "observatory", "parking", "petroleum_well", "power_plant", "power_substation", "power_tower", "river", "runway",
    "satellite_dish", "silo", "storage_tank", "taxiway", "water_tower", "works",
)  # fmt: skip
_WORLDCEREAL_BANDS = (
    "tc-annual-temporarycrops-classification", "tc-maize-main-irrigation-classification",
    "tc-maize-main-maize-classification", "tc-maize-second-irrigation-classification",
    "tc-maize-second-maize-classification", "tc-springcereals-springcereals-classification",
    "tc-wintercereals-irrigation-classification", "tc-wintercereals-wintercereals-classification",
)  # fmt: skip
_ERA5_BANDS = (
    "2m-temperature", "2m-dewpoint-temperature", "surface-pressure", "10m-u-component-of-wind",
    "10m-v-component-of-wind", "total-precipitation",
)  # fmt: skip

MODALITIES: dict[str, ModalitySpec] = {
    spec.name: spec
    for spec in (
        ModalitySpec(
            "sentinel2_l2a",
            (("B02", "B03", "B04", "B08"), ("B05", "B06", "B07", "B8A", "B11", "B12"), ("B01", "B09")),
            multitemporal=True,
        ),
        ModalitySpec("sentinel1", (("vv", "vh"),), multitemporal=True),
        ModalitySpec("worldcover", (("B1",),), multitemporal=False),
        ModalitySpec("latlon", (("lat", "lon"),), multitemporal=False, spatial=False),
        ModalitySpec("openstreetmap_raster", (_OSM_BANDS,), multitemporal=False),
        ModalitySpec("srtm", (("srtm",),), multitemporal=False),
        ModalitySpec(
            "landsat",
            (("B8",), ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B9", "B10", "B11")),
            multitemporal=True,
        ),
        ModalitySpec("naip_10", (("R", "G", "B", "IR"),), multitemporal=False, image_tile_size_factor=4),
        ModalitySpec("cdl", (("cdl",),), multitemporal=False),
        ModalitySpec("worldcereal", (_WORLDCEREAL_BANDS,), multitemporal=False),
        ModalitySpec("wri_canopy_height_map", (("B1",),), multitemporal=False),
        ModalitySpec("era5_10", (_ERA5_BANDS,), multitemporal=True, spatial=False),
        ModalitySpec("ndvi", (("ndvi",),), multitemporal=True),
    )
}
"""Supported modalities by name."""

# Modality field order of a masked batch (the order tokens of a sample are concatenated in).
BATCH_FIELD_ORDER = (
    "sentinel2_l2a", "sentinel1", "worldcover", "worldcover_onehot", "latlon", "openstreetmap_raster", "srtm",
    "landsat", "naip", "naip_10", "gse", "cdl", "worldpop", "worldcereal", "wri_canopy_height_map", "era5_10",
    "ndvi", "eurocrops",
)  # fmt: skip


def get_modality(name_or_spec) -> ModalitySpec:
    """The :class:`ModalitySpec` of a name, of a spec, or of any object with a ``name``
    attribute naming a supported modality (e.g. the reference's own ModalitySpec)."""
    if isinstance(name_or_spec, ModalitySpec):
        return name_or_spec
    name = name_or_spec if isinstance(name_or_spec, str) else getattr(name_or_spec, "name", None)
    if name not in MODALITIES:
        raise ValueError(f"modality: unknown modality {name!r}; supported: {', '.join(MODALITIES)}")
    return MODALITIES[name]
