"""The reference's per-sample H5 pretraining format: writing and reading.

One file ``sample_{index}.h5`` per sample with datasets ``latlon`` [2], ``timestamps``
[T_long, 3] (day, month 0..11, year), one dataset per present modality (spatial
``[H, W, T_m, C]``, non-spatial ``[T_m, C]``, raw values) and a group
``missing_timesteps_masks`` with a bool ``[T_long]`` per space-time modality (True where the
modality has that timestep; its dataset stores only those timesteps, in order).
``sample_metadata.csv`` lists per sample which modalities are present.
"""

import csv
import os

import h5py
import numpy as np

try:  # registers the zstd filter the reference's files are compressed with, when installed
    import hdf5plugin  # noqa: F401
except ImportError:
    hdf5plugin = None

from .modalities import MISSING_VALUE, get_modality

MAX_SEQUENCE_LENGTH = 12


class DataFormatError(ValueError):
    """A data file does not follow the expected format (the message names the file and field)."""


def write_sample(path: str, arrays: dict, timestamps: np.ndarray, latlon, present_steps: dict | None = None) -> None:
    """Write one sample (atomically: temporary file, then rename).

    Args:
        arrays: ``{modality: raw array}`` of the present modalities (space-time arrays hold
            only their present timesteps).
        timestamps: ``[T_long, 3]`` int (day, month 0..11, year).
        present_steps: ``{modality: bool [T_long]}`` for space-time modalities.
    """
    tmp = f"{path}.tmp"
    with h5py.File(tmp, "w") as f:
        f.create_dataset("latlon", data=np.asarray(latlon, dtype=np.float32))
        f.create_dataset("timestamps", data=np.asarray(timestamps, dtype=np.int32))
        for name, array in arrays.items():
            f.create_dataset(name, data=array)
        group = f.create_group("missing_timesteps_masks")
        for name, steps in (present_steps or {}).items():
            group.create_dataset(name, data=np.asarray(steps, dtype=bool))
    os.replace(tmp, path)


def write_metadata(directory: str, presence: list[dict], modalities: list[str]) -> None:
    path = os.path.join(directory, "sample_metadata.csv")
    with open(f"{path}.tmp", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["sample_index", *modalities])
        for index, present in enumerate(presence):
            writer.writerow([index, *[int(bool(present.get(m))) for m in modalities]])
    os.replace(f"{path}.tmp", path)


def read_metadata(directory: str) -> list[dict]:
    path = os.path.join(directory, "sample_metadata.csv")
    if not os.path.exists(path):
        raise DataFormatError(f"{path}: missing (expected one row per sample with modality presence columns)")
    with open(path, newline="") as f:
        return [{k: int(v) for k, v in row.items()} for row in csv.DictReader(f)]


def read_sample(path: str, modalities: list[str], tile: int | None = None) -> tuple[dict, np.ndarray, int]:
    """Read one sample, filled to full length (the reference's ``__getitem__`` steps 1-4).

    Returns:
        ``(arrays, timestamps, length)``: every training modality as float32 (absent ones
        and absent timesteps are MISSING_VALUE; space-time ``[H, W, 12, C]``, space-only
        ``[H, W, 1, C]``, time-only ``[12, C]``), timestamps ``[12, 3]`` padded by repeating
        the last row, and the number of real timesteps after cropping to the first..last
        timestep where any space-time modality is present.
    """
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise DataFormatError(f"{path}: not a readable H5 file ({err})") from None
    with f:
        if "timestamps" not in f:
            raise DataFormatError(f"{path}: no 'timestamps' dataset")
        timestamps = np.asarray(f["timestamps"][()], dtype=np.int64)
        if timestamps.ndim != 2 or timestamps.shape[1] != 3:
            raise DataFormatError(f"{path}: 'timestamps' must be [T, 3], got {list(timestamps.shape)}")
        masks_group = f.get("missing_timesteps_masks", {})
        try:
            steps = {m: np.asarray(masks_group[m][()], dtype=bool) for m in modalities if m in masks_group}
            raw = {m: np.asarray(f[m][()]) for m in modalities if m in f}
        except OSError as err:
            hint = " (zstd-compressed files need `pip install hdf5plugin`)" if hdf5plugin is None else ""
            raise DataFormatError(f"{path}: cannot read a dataset: {err}{hint}") from None
    first, last = 0, timestamps.shape[0] - 1
    if steps:
        any_present = np.zeros(timestamps.shape[0], dtype=bool)
        for s in steps.values():
            any_present[: s.shape[0]] |= s
        where = np.nonzero(any_present)[0]
        if where.size:
            first, last = int(where[0]), int(where[-1])
    timestamps = timestamps[first : last + 1]
    length = timestamps.shape[0]
    padded = np.concatenate([timestamps, np.repeat(timestamps[-1:], MAX_SEQUENCE_LENGTH - length, axis=0)])[:12]
    if tile is None:
        tile = next((a.shape[0] for m, a in raw.items() if get_modality(m).is_spatial), 1)
    out = {}
    for m in modalities:
        spec = get_modality(m)
        c = spec.num_bands
        if spec.is_spatial:
            shape = (tile, tile, MAX_SEQUENCE_LENGTH if spec.is_multitemporal else 1, c)
        else:
            shape = (MAX_SEQUENCE_LENGTH, c)
        full = np.full(shape, MISSING_VALUE, dtype=np.float32)
        if m in raw:
            array = raw[m].astype(np.float32)
            if array.shape[-1] != c:
                raise DataFormatError(f"{path}: dataset {m!r} has {array.shape[-1]} bands, expected {c}")
            if spec.is_multitemporal and m in steps:
                present = np.nonzero(steps[m][first : last + 1])[0]
                offset = int(steps[m][:first].sum())
                src = array[..., offset : offset + present.size, :] if spec.is_spatial else array[offset : offset + present.size]
                if spec.is_spatial:
                    full[:, :, present] = src
                else:
                    full[present] = src
            elif spec.is_spatial:
                full[..., : array.shape[2], :] = array[..., : shape[2], :]
            else:
                full[: array.shape[0]] = array[:MAX_SEQUENCE_LENGTH]
        out[m] = full
    return out, padded, length
