"""Synthetic pretraining data in the reference's H5 format.

Values follow the reference normalisation statistics per band (so normalised data is
centred near 0.5), modalities are missing per sample and space-time modalities miss some
timesteps, exactly the cases the reader has to handle.
"""

import json
import os

import numpy as np

from .h5 import write_metadata, write_sample
from .modalities import get_modality
from .normalize import COMPUTED, PREDEFINED

PRESENCE = {"sentinel2_l2a": 0.95, "sentinel1": 0.8, "landsat": 0.7, "cdl": 0.3}


def _values(modality: str, shape: tuple, rng: np.random.Generator) -> np.ndarray:
    if modality in COMPUTED:
        stats = np.asarray(COMPUTED[modality])
        return (stats[:, 0] + stats[:, 1] * rng.standard_normal(shape + (len(stats),))).astype(np.float32)
    lo, hi = PREDEFINED.get(modality, (0.0, 1.0))
    bands = get_modality(modality).num_bands
    if modality == "openstreetmap_raster":
        return (rng.random(shape + (bands,)) < 0.05).astype(np.float32)
    return rng.uniform(lo, hi, shape + (bands,)).astype(np.float32)


def generate(directory: str, num_samples: int, modalities: list[str], tile: int = 32, seed: int = 0,
             progress=None) -> str:  # fmt: skip
    """Write ``num_samples`` samples into ``directory`` (created); returns the directory.

    Spatial modalities are ``tile x tile`` pixels; ``ndvi`` is derived at read time and
    ``era5_10`` is never written (as in the study's dataset).
    """
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    stored = [m for m in modalities if m not in ("ndvi", "era5_10")]
    presence = []
    for index in range(num_samples):
        t_long = int(rng.integers(6, 13))
        months = np.arange(t_long) % 12
        timestamps = np.stack([np.full(t_long, 1), months, np.full(t_long, 2022)], axis=1)
        arrays, steps, present = {}, {}, {}
        for m in stored:
            if rng.random() > PRESENCE.get(m, 0.9):
                continue
            spec = get_modality(m)
            if spec.is_multitemporal:
                mask = rng.random(t_long) < 0.8
                mask[rng.integers(t_long)] = True
                steps[m] = mask
                arrays[m] = _values(m, (tile, tile, int(mask.sum())), rng)
            else:
                arrays[m] = _values(m, (tile, tile, 1), rng)
            present[m] = True
        if not any(present.get(m) for m in ("sentinel2_l2a", "sentinel1", "landsat")):
            arrays["sentinel2_l2a"] = _values("sentinel2_l2a", (tile, tile, t_long), rng)
            steps["sentinel2_l2a"] = np.ones(t_long, dtype=bool)
            present["sentinel2_l2a"] = True
        write_sample(os.path.join(directory, f"sample_{index}.h5"), arrays, timestamps,
                     rng.uniform([-60, -180], [60, 180]), steps)  # fmt: skip
        presence.append(present)
        if progress:
            progress(index + 1, num_samples)
    write_metadata(directory, presence, stored)
    with open(os.path.join(directory, "synthetic.json"), "w") as f:
        json.dump({"num_samples": num_samples, "tile": tile, "seed": seed, "modalities": stored}, f)
    return directory
