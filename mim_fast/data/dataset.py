"""Pretraining samples: crop / time-budget sampling, NDVI, normalisation, two masked views.

Rank batch ``k`` of an epoch is a pure function of ``(seed, epoch, k, rank)``: the sample
order (a permutation seeded ``seed + epoch``), the batch's ``(patch_size, hw_p)``, the crops
and both masks are drawn from generators seeded by those numbers. Training resumed at
batch ``k`` therefore sees exactly the batches an uninterrupted run would have seen.
"""

import numpy as np
import torch

from .. import masking
from ..data.batch import MaskedBatch
from .h5 import MAX_SEQUENCE_LENGTH, read_metadata, read_sample
from .modalities import MISSING_VALUE, get_modality
from .normalize import normalize

SPACE_TIME = ("sentinel2_l2a", "sentinel1", "landsat")


def max_timesteps(modalities, band_sets: dict, hw_p: int, budget: int) -> int:
    """Timesteps that fit the token budget (the reference's rule, ``band_sets[m]`` per modality)."""
    fixed, per_t = 0, 0
    for m in modalities:
        spec = get_modality(m)
        n = band_sets[m]
        if spec.is_spatial and spec.is_multitemporal:
            per_t += hw_p * hw_p * n
        elif spec.is_spatial:
            fixed += hw_p * hw_p * n
        elif spec.is_multitemporal:
            per_t += n
        else:
            fixed += n
    if per_t == 0:
        return 1
    room = (budget - fixed) / per_t
    if room < 1:
        raise ValueError(f"token_budget: {budget} tokens do not fit one timestep at hw_p={hw_p} ({fixed} fixed)")
    return min(int(room), MAX_SEQUENCE_LENGTH)


def ndvi_from_s2(s2_raw: np.ndarray) -> np.ndarray:
    """NDVI ``[..., 1]`` from raw Sentinel-2 (B04 red, B08 nir): 0 where nir + red ~ 0, MISSING where either is."""
    order = get_modality("sentinel2_l2a").band_order
    red, nir = s2_raw[..., order.index("B04")].astype(np.float64), s2_raw[..., order.index("B08")].astype(np.float64)
    denom = nir + red
    with np.errstate(divide="ignore", invalid="ignore"):
        value = np.where(np.abs(denom) < 1e-10, 0.0, (nir - red) / denom)
    value = np.where((red == MISSING_VALUE) | (nir == MISSING_VALUE), MISSING_VALUE, value)
    return value[..., None].astype(np.float32)


class PretrainBatches(torch.utils.data.Dataset):
    """Map-style dataset whose item ``k`` is rank batch ``k``: ``(patch_size, view_a, view_b)``.

    Args:
        directory: folder of ``sample_*.h5`` files and ``sample_metadata.csv``.
        modalities: training modalities. masking_config / tokenization: the experiment's.
        rank_batch_size, token_budget, sampled_hw_p_list, min/max_patch_size, seed: as the reference.
        budget_with_tokenization: count the budget with the experiment's band sets instead of
            the default ones (the reference counts default band sets; a flag here).
        epoch: 1-based epoch; rank / world_size: data-parallel position.
    """

    def __init__(self, directory, modalities, masking_config, tokenization, rank_batch_size, token_budget,
                 sampled_hw_p_list, min_patch_size=1, max_patch_size=8, seed=0, budget_with_tokenization=False,
                 epoch=1, rank=0, world_size=1):  # fmt: skip
        self.directory = directory
        self.modalities = list(modalities)
        self.strategy = masking.build(masking_config, tokenization=tokenization)
        self.rank_batch_size = rank_batch_size
        self.world_size = world_size
        self.rank = rank
        self.budget = token_budget
        self.hw_choices = list(sampled_hw_p_list)
        self.patch_choices = list(range(min_patch_size, max_patch_size + 1))
        self.seed = seed
        self.epoch = epoch
        from ..nn.tokenization import as_tokenization_config

        config = as_tokenization_config(tokenization)
        self.band_sets = {
            m: (config.get_num_bandsets(m) if budget_with_tokenization else get_modality(m).num_band_sets)
            for m in self.modalities
        }
        metadata = read_metadata(directory)
        self.samples = [int(row["sample_index"]) for row in metadata if any(row.get(m, 0) for m in SPACE_TIME)]
        global_batch = rank_batch_size * world_size
        if len(self.samples) < global_batch:
            raise ValueError(
                f"data_loader.global_batch_size: {global_batch} is larger than the {len(self.samples)} usable samples in {directory}"
            )
        self.num_batches = len(self.samples) // global_batch
        self.tile = _tile_size(directory, self.samples[0], self.modalities)
        self.set_epoch(epoch)

    def set_epoch(self, epoch: int) -> None:
        """Sample order of a (1-based) epoch: a permutation seeded ``seed + epoch``, truncated to whole batches."""
        self.epoch = epoch
        global_batch = self.rank_batch_size * self.world_size
        order = np.random.default_rng(self.seed + epoch).permutation(len(self.samples))
        self.order = order[: self.num_batches * global_batch].reshape(self.num_batches, global_batch)

    def __len__(self) -> int:
        return self.num_batches

    def _sample(self, index: int, patch: int, hw_p: int, rng: np.random.Generator) -> dict:
        arrays, timestamps, length = read_sample(f"{self.directory}/sample_{index}.h5", self.modalities)
        t_max = max_timesteps(self.modalities, self.band_sets, hw_p, self.budget)
        start = 0
        if length > t_max:
            candidates = set()
            for m in SPACE_TIME:
                if m in arrays:
                    present = np.nonzero((arrays[m] != MISSING_VALUE).any(axis=(0, 1, 3))[:length])[0]
                    candidates |= {int(t) for t in present if t + t_max <= length}
            candidates = sorted(candidates) or list(range(length - t_max + 1))
            start = int(rng.choice(candidates))
        size = hw_p * patch
        tile = next((a.shape[0] for m, a in arrays.items() if get_modality(m).is_spatial), size)
        if tile < size:
            raise ValueError(f"sample_{index}.h5: tile {tile} px is smaller than the crop {size} px")
        h0, w0 = int(rng.integers(tile - size + 1)), int(rng.integers(tile - size + 1))
        out = {}
        for m, a in arrays.items():
            spec = get_modality(m)
            if spec.is_spatial:
                a = a[h0 : h0 + size, w0 : w0 + size]
                if spec.is_multitemporal:
                    a = a[:, :, start : start + t_max]
            elif spec.is_multitemporal:
                a = a[start : start + t_max]
            out[m] = a
        if "ndvi" in self.modalities and "sentinel2_l2a" in out:
            out["ndvi"] = ndvi_from_s2(out["sentinel2_l2a"])
        for m in out:
            if (out[m] != MISSING_VALUE).any():
                out[m] = normalize(m, out[m])
        out["timestamps"] = timestamps[start : start + t_max]
        return out

    def __getitem__(self, k: int):
        if not 0 <= k < self.num_batches:
            raise IndexError(k)
        rng = np.random.default_rng([self.seed, self.epoch, k, self.rank])
        patch = int(rng.choice(self.patch_choices))
        # The reference filters with a 256-px tile, which never binds on its 128-px tiles; the
        # real tile size is used here so that smaller (e.g. synthetic) tiles work too.
        fits = [h for h in self.hw_choices if 0 < h <= min(256, self.tile) // patch]
        if not fits:
            raise ValueError(
                f"data_loader.sampled_hw_p_list: no crop of {self.hw_choices} tokens fits {self.tile}-px tiles at patch size {patch}"
            )
        hw_p = int(rng.choice(fits))
        columns = self.order[k, self.rank :: self.world_size]
        samples = [self._sample(self.samples[i], patch, hw_p, rng) for i in columns]
        stacked = {key: torch.from_numpy(np.stack([s[key] for s in samples])) for key in samples[0]}
        batch = MaskedBatch(**stacked)
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        return patch, self.strategy.apply_mask(batch, patch, gen), self.strategy.apply_mask(batch, patch, gen)


def _tile_size(directory: str, index: int, modalities) -> int:
    """Pixel size of the spatial data in one sample file (all samples share it)."""
    import h5py

    with h5py.File(f"{directory}/sample_{index}.h5", "r") as f:
        for m in modalities:
            if m in f and get_modality(m).is_spatial:
                return int(f[m].shape[0])
    return 256
