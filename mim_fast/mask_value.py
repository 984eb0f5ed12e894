"""Token mask codes shared with the reference system (same integers)."""

from enum import IntEnum


class MaskValue(IntEnum):
    """What happens to a token in one masked view.

    ONLINE_ENCODER: visible to the online encoder (and context for the decoder).
    TARGET_ENCODER_ONLY: seen only by the target encoder.
    DECODER: predicted by the decoder; the loss is computed on these.
    MISSING: no data.
    """

    ONLINE_ENCODER = 0
    TARGET_ENCODER_ONLY = 1
    DECODER = 2
    MISSING = 3
