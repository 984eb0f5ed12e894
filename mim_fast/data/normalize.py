"""Normalisation with the reference's statistics.

"computed" bands: ``x' = 0.5 + (x - mean) / (4 std)`` (min/max = mean -/+ 2 std);
"predefined" bands: ``x' = (x - min) / (max - min)``. Arithmetic in float64, result float32;
MISSING values stay MISSING.
"""

import numpy as np

from .modalities import MISSING_VALUE, get_modality

# modality -> per band (mean, std) in band order
COMPUTED = {
    "sentinel2_l2a": [
        (1188.9412572078477, 1859.1923971769581), (1407.7739105458452, 1727.7387413631088),
        (1513.0573882432757, 1740.7757298757895), (2755.481305028308, 1612.2565699990187),
        (1890.9893042634167, 1754.7320388511766), (2483.7812315422448, 1622.1172720635755),
        (2722.728248756412, 1621.8226170190276), (2885.570263047681, 1611.3587521042082),
        (2562.852607796968, 1441.5471830655151), (1914.1383249044113, 1328.8914382756407),
        (1115.8494388252218, 1955.6991794280914), (3269.812554170875, 2651.088425085525),
    ],
    "sentinel1": [(-11.648990747328444, 10.840350299936597), (-17.745436133270044, 10.216274681392647)],
    "landsat": [
        (10132.090998288624, 7788.7282476413675), (11000.959519415692, 7857.9205791510285),
        (10493.416292898208, 7872.392135393957), (10146.318478942761, 7676.2774595217115),
        (10236.446029167704, 8038.218121686258), (14427.021492873682, 9302.431605916356),
        (12164.08145353199, 7442.390533225441), (9712.032951062303, 6037.712185433222),
        (4585.469566989013, 2549.745355740949), (21347.89356940543, 10957.2815012006),
        (19686.23205859348, 9911.421224126807),
    ],
    "worldcover": [(34.04615796218091, 24.232421963981864)],
    "srtm": [(677.0219719644446, 993.1721306513513)],
    "wri_canopy_height_map": [(10.0, 5.0)],
    "cdl": [(100.0, 50.0)],
    "era5_10": [
        (294.50472126252856, 8.411936534534556), (285.4559527246544, 9.404737682243573),
        (93020.7548015346, 9569.325560265575), (-0.34763355416884184, 1.292515224265983),
        (0.1255414511094536, 1.1178926517853272), (0.0027392657043728242, 0.003682535319040505),
    ],
}  # fmt: skip
# modality -> (min, max) for every band
PREDEFINED = {"openstreetmap_raster": (0.0, 1.0), "worldcereal": (0.0, 100.0), "ndvi": (-1.0, 1.0)}


def band_statistics(modality: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-band ``(min, max)`` (float64 arrays) used to normalise ``modality``."""
    bands = get_modality(modality).num_bands
    if modality in COMPUTED:
        stats = np.asarray(COMPUTED[modality], dtype=np.float64)
        return stats[:, 0] - 2 * stats[:, 1], stats[:, 0] + 2 * stats[:, 1]
    if modality in PREDEFINED:
        lo, hi = PREDEFINED[modality]
        return np.full(bands, lo), np.full(bands, hi)
    raise KeyError(f"modality: no normalisation statistics for {modality!r}")


def normalize(modality: str, x: np.ndarray) -> np.ndarray:
    """Normalise channel-last ``x [..., C]``; MISSING_VALUE entries are kept."""
    lo, hi = band_statistics(modality)
    out = (x.astype(np.float64) - lo) / (hi - lo)
    return np.where(x == MISSING_VALUE, MISSING_VALUE, out).astype(np.float32)
