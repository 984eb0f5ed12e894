"""Masking strategies with the reference's semantics (oddities kept where the study trained
with them; see each class). They run on CPU tensors in data-loader workers; every random
draw goes through the ``generator`` argument (global torch RNG when None).

``apply_mask(batch, patch_size, generator=None)`` takes any batch with the reference's data
attributes (``.modalities``, ``.<modality>``, ``.timestamps``) and returns a
:class:`mim_fast.data.MaskedBatch` with ``<modality>_mask`` fields.
"""

import torch

from ..data.batch import MaskedBatch
from ..data.modalities import BATCH_FIELD_ORDER, get_modality
from ..mask_value import MaskValue
from ..nn.tokenization import as_tokenization_config
from .tokens import ceil_count, missing_pixels, random_fill, shuffled_roles, to_pixels, to_tokens

ENC, TGT, DEC, MISS = (int(MaskValue.ONLINE_ENCODER), int(MaskValue.TARGET_ENCODER_ONLY), int(MaskValue.DECODER),
                       int(MaskValue.MISSING))  # fmt: skip


class MaskingStrategy:
    """Shared state: ratios, tokenization (``{modality: [[bands]]}`` or a config object)."""

    def __init__(self, encode_ratio: float = 0.5, decode_ratio: float = 0.5, tokenization=None):
        for name, value in (("encode_ratio", encode_ratio), ("decode_ratio", decode_ratio)):
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name}: must be in [0, 1], got {value}")
        if encode_ratio + decode_ratio > 1.0 + 1e-9:
            raise ValueError(f"encode_ratio + decode_ratio must be <= 1, got {encode_ratio} + {decode_ratio}")
        self.encode_ratio = float(encode_ratio)
        self.decode_ratio = float(decode_ratio)
        self.tokenization = as_tokenization_config(tokenization)

    def band_sets(self, modality: str) -> list[list[int]]:
        return self.tokenization.get_bandset_indices(modality)

    @staticmethod
    def modalities(batch) -> list[str]:
        present = {str(m) for m in batch.modalities}
        return [m for m in BATCH_FIELD_ORDER if m in present]

    def _missing(self, batch, modality: str) -> torch.Tensor:
        """Pixel-level MISSING test ``[..., n_sets]`` of a modality."""
        return missing_pixels(getattr(batch, modality), self.band_sets(modality))

    def _token_shape(self, batch, modality: str, patch_size: int) -> tuple[int, ...]:
        data = getattr(batch, modality)
        n_sets = len(self.band_sets(modality))
        spec = get_modality(modality)
        if spec.is_spatial:
            q = patch_size * spec.image_tile_size_factor
            return (data.shape[0], data.shape[1] // q, data.shape[2] // q, *data.shape[3:-1], n_sets)
        return (*data.shape[:-1], n_sets)

    def _random_pixels(self, batch, modality, patch_size, generator, encode=None, decode=None) -> torch.Tensor:
        """The ``random`` strategy's mask of one modality at pixel level, MISSING pixel-exact."""
        encode = self.encode_ratio if encode is None else encode
        decode = self.decode_ratio if decode is None else decode
        shape = self._token_shape(batch, modality, patch_size)
        spec = get_modality(modality)
        if spec.is_spatial or spec.is_multitemporal:
            n = 1
            for s in shape[1:]:
                n *= s
            tokens = shuffled_roles(shape[0], n, encode, decode, generator).view(shape)
        else:  # static: one pool over the batch
            tokens = shuffled_roles(1, shape[0] * shape[1], encode, decode, generator).view(shape)
        pixels = to_pixels(tokens, modality, patch_size)
        missing = self._missing(batch, modality)
        pixels = pixels[tuple(slice(0, s) for s in missing.shape)]
        return torch.where(missing, torch.full_like(pixels, MISS), pixels)

    def _finish(self, batch, masks: dict) -> MaskedBatch:
        fields = {m: getattr(batch, m) for m in self.modalities(batch)}
        fields.update({f"{m}_mask": masks[m] for m in masks})
        fields["timestamps"] = getattr(batch, "timestamps", None)
        return MaskedBatch(**fields)

    def apply_mask(self, batch, patch_size: int, generator: torch.Generator | None = None) -> MaskedBatch:
        raise NotImplementedError


class RandomMasking(MaskingStrategy):
    """``random``: per (sample, modality) a random arrangement of ``int(N * enc)`` encoder,
    ``int(N * dec)`` decoder and the remaining target-only tokens over all ``N`` tokens of the
    modality (band sets pooled), drawn before MISSING is applied (so among present tokens
    the split is hypergeometric). Static modalities share one pool over the batch."""

    def apply_mask(self, batch, patch_size, generator=None):
        if not patch_size:
            raise ValueError("patch_size: required")
        masks = {m: self._random_pixels(batch, m, patch_size, generator) for m in self.modalities(batch)}
        return self._finish(batch, masks)


class _DecodeOnly(MaskingStrategy):
    def __init__(self, encode_ratio=0.5, decode_ratio=0.5, only_decode_modalities=(), tokenization=None):
        super().__init__(encode_ratio, decode_ratio, tokenization)
        self.only_decode = [str(m) for m in (only_decode_modalities or [])]


class ModalityCrossRandomMasking(_DecodeOnly):
    """``modality_cross_random``: random masks, then per sample a set E of band sets to encode
    and a set D to decode (reference semantics, oddities kept):

    * present list L (field order): a band set is listed if it has an encoder token after the
      random step, or its modality is decode-only (listed even when missing);
    * ``|L| == 1``: E = L; ``|L| == 2``: E = {L[0]}, D = {L[1]}; otherwise k encodable band sets
      (k uniform in [min_enc, max_enc]) form E, and with ``allow_encoding_decoding_same_bandset``
      D is a random m-subset of all of L (m uniform in [min_dec, max_dec]), else D = L \\ E;
    * band sets not in E lose their encoder tokens (their decoder tokens stay, whether or not
      they are in D); band sets in E but not in D lose their decoder tokens;
    * a sample left without any encoder or any decoder token gets its non-decode-only
      modalities re-drawn with a 50/50 random fill.
    """

    def __init__(self, encode_ratio=0.5, decode_ratio=0.5, allow_encoding_decoding_same_bandset=False,
                 min_encoded_bandsets=2, max_encoded_bandsets=None, min_decoded_bandsets=None,
                 max_decoded_bandsets=None, only_decode_modalities=(), tokenization=None):  # fmt: skip
        super().__init__(encode_ratio, decode_ratio, only_decode_modalities, tokenization)
        if min_encoded_bandsets is None and max_encoded_bandsets is not None:
            raise ValueError("max_encoded_bandsets: requires min_encoded_bandsets")
        if min_encoded_bandsets is not None and min_encoded_bandsets <= 1:
            raise ValueError(f"min_encoded_bandsets: must be > 1, got {min_encoded_bandsets}")
        self.allow_same = bool(allow_encoding_decoding_same_bandset)
        self.min_enc, self.max_enc = min_encoded_bandsets, max_encoded_bandsets
        self.min_dec, self.max_dec = min_decoded_bandsets, max_decoded_bandsets

    def _choose(self, listed, generator):
        n = len(listed)
        if n == 1:
            return set(listed), set()
        if n == 2:
            return {listed[0]}, {listed[1]}
        encodable = [x for x in listed if x[0] not in self.only_decode]
        n_e = len(encodable)
        upper = n_e if self.allow_same else n_e - 1
        max_enc = upper if self.max_enc is None else min(self.max_enc, upper)
        min_enc = n_e if self.min_enc is None else min(self.min_enc, n_e)
        min_enc = min(min_enc, max_enc)
        k = int(torch.randint(min_enc, max_enc + 1, (), generator=generator)) if max_enc >= min_enc else 0
        picks = torch.randperm(n_e, generator=generator)[: max(k, 0)].tolist() if n_e else []
        encoded = {encodable[i] for i in picks}
        if self.allow_same:
            min_dec = min(self.min_dec or 1, n)
            max_dec = min(self.max_dec or n, n)
            m = int(torch.randint(min_dec, max_dec + 1, (), generator=generator)) if n else 0
            decoded = {listed[i] for i in torch.randperm(n, generator=generator)[:m].tolist()}
        else:
            decoded = set(listed) - encoded
        return encoded, decoded

    def apply_mask(self, batch, patch_size, generator=None):
        if not patch_size:
            raise ValueError("patch_size: required")
        names = self.modalities(batch)
        masks = {m: self._random_pixels(batch, m, patch_size, generator) for m in names}
        batch_size = next(iter(masks.values())).shape[0] if masks else 0
        # Per (modality, sample, band set): present at all, has an encoder token.
        present = {m: (masks[m] != MISS).reshape(batch_size, -1).any(1) for m in names}
        has_enc = {m: (masks[m] == ENC).reshape(batch_size, -1, masks[m].shape[-1]).any(1) for m in names}
        for b in range(batch_size):
            listed = [
                (m, i)
                for m in names
                if bool(present[m][b])
                for i in range(masks[m].shape[-1])
                if m in self.only_decode or bool(has_enc[m][b, i])
            ]
            encoded, decoded = self._choose(listed, generator)
            for m in names:
                if not any(x[0] == m for x in listed):
                    continue
                for i in range(masks[m].shape[-1]):
                    sl = masks[m][b, ..., i]
                    if (m, i) not in encoded:
                        sl[sl == ENC] = TGT
                    elif (m, i) not in decoded:
                        sl[sl == DEC] = TGT
        self._repair(batch, masks, names, patch_size, generator)
        return self._finish(batch, masks)

    def _repair(self, batch, masks, names, patch_size, generator):
        """Samples without an encoder or a decoder token: re-draw their non-decode-only modalities."""
        if not names:
            return
        batch_size = masks[names[0]].shape[0]
        n_enc = sum((masks[m] == ENC).reshape(batch_size, -1).sum(1) for m in names)
        n_dec = sum((masks[m] == DEC).reshape(batch_size, -1).sum(1) for m in names)
        broken = (n_enc == 0).nonzero().squeeze(1).tolist() + (n_dec == 0).nonzero().squeeze(1).tolist()
        for b in broken:
            for m in names:
                if m in self.only_decode:
                    continue
                tokens = to_tokens(masks[m][b : b + 1], m, patch_size)
                filled = to_pixels(random_fill(tokens, 0.5, 0.5, generator), m, patch_size)
                masks[m][b : b + 1] = filled[tuple(slice(0, s) for s in masks[m][b : b + 1].shape)]


class RandomWithDecodeMasking(_DecodeOnly):
    """``random_with_decode``: decode-only modalities are entirely DECODER (MISSING kept);
    per sample the listed encodable band sets (those with a present pixel) are shuffled, the
    first ``ceil(len * enc)`` get an encoder role (``int(n * enc)`` encoder tokens, rest
    target-only), the others a decoder role (``int(n * dec)`` decoder tokens, rest
    target-only; a single present token is encoded instead); a single listed band set gets a
    random enc/dec fill. Roles are drawn at token level (top-left pixel of each block)."""

    def _init_masks(self, batch, names):
        masks = {}
        for m in names:
            missing = self._missing(batch, m)
            masks[m] = torch.where(missing, MISS, DEC).to(torch.int64)
        return masks

    def _fill(self, masks, m, b, i, patch_size, encode, decode, generator):
        block = masks[m][b : b + 1, ..., i : i + 1]
        tokens = to_tokens(block, m, patch_size)
        filled = to_pixels(random_fill(tokens, encode, decode, generator), m, patch_size)
        masks[m][b : b + 1, ..., i : i + 1] = filled[tuple(slice(0, s) for s in block.shape)]

    def _listed(self, masks, names, b):
        return [
            (m, i)
            for m in names
            if m not in self.only_decode
            for i in range(masks[m].shape[-1])
            if bool((masks[m][b, ..., i] != MISS).any())
        ]

    def _shuffle(self, listed, generator):
        order = torch.randperm(len(listed), generator=generator).tolist()
        return [listed[k] for k in order]

    def _sample_plan(self, masks, listed, b, generator):
        """Per-sample state drawn before the roles (none here; the time variant draws its mode)."""
        return None

    def _assign(self, masks, m, b, i, role, plan, patch_size, generator):
        """Give band set ``(m, i)`` of sample ``b`` its role (random fill of that role)."""
        if role == ENC:
            self._fill(masks, m, b, i, patch_size, self.encode_ratio, 0.0, generator)
        else:
            self._fill(masks, m, b, i, patch_size, 0.0, self.decode_ratio, generator)

    def apply_mask(self, batch, patch_size, generator=None):
        if not patch_size:
            raise ValueError("patch_size: required")
        names = self.modalities(batch)
        masks = self._init_masks(batch, names)
        batch_size = next(iter(masks.values())).shape[0] if masks else 0
        for b in range(batch_size):
            listed = self._listed(masks, names, b)
            plan = self._sample_plan(masks, listed, b, generator)
            if len(listed) == 1:
                m, i = listed[0]
                self._fill(masks, m, b, i, patch_size, self.encode_ratio, self.decode_ratio, generator)
                continue
            listed = self._shuffle(listed, generator)
            k = ceil_count(len(listed), self.encode_ratio)
            for rank, (m, i) in enumerate(listed):
                self._assign(masks, m, b, i, ENC if rank < k else DEC, plan, patch_size, generator)
        return self._finish(batch, masks)


class RandomTimeWithDecodeMasking(RandomWithDecodeMasking):
    """``random_time_with_decode``: as ``random_with_decode``, but per sample with probability
    ``1 - random_ratio`` (when at least two timesteps are present among the listed space-time
    band sets) a *time mode*: present timesteps are shuffled, the first ``ceil(n_t * enc)``
    become encode timesteps and the rest decode timesteps; a space-time band set then gets
    its role value on every present pixel of its role's timesteps (target-only elsewhere),
    falling back to the random fill when it has nothing present at those timesteps."""

    def __init__(self, encode_ratio=0.5, decode_ratio=0.5, random_ratio=0.5, only_decode_modalities=(),
                 tokenization=None):  # fmt: skip
        super().__init__(encode_ratio, decode_ratio, only_decode_modalities, tokenization)
        if random_ratio > 1:
            raise ValueError(f"random_ratio: must be <= 1, got {random_ratio}")
        self.random_ratio = float(random_ratio)

    @staticmethod
    def _space_time(m):
        spec = get_modality(m)
        return spec.is_spatial and spec.is_multitemporal

    def _sample_plan(self, masks, listed, b, generator):
        """The sample's time split ``{ENC: steps, DEC: steps}``, or None for the random mode."""
        present_t = None
        for m, i in listed:
            if self._space_time(m):
                at_t = (masks[m][b, ..., i] != MISS).sum(dim=(0, 1)).clamp_max(1)
                present_t = at_t if present_t is None else (present_t + at_t).clamp_max(1)
        if present_t is None or int(present_t.sum()) < 2:
            return None
        if float(torch.rand((), generator=generator)) < self.random_ratio:
            return None
        steps = present_t.nonzero().squeeze(1)
        steps = steps[torch.randperm(steps.numel(), generator=generator)]
        k_t = ceil_count(steps.numel(), self.encode_ratio)
        return {ENC: steps[:k_t], DEC: steps[k_t:]}

    def _assign(self, masks, m, b, i, role, plan, patch_size, generator):
        sl = masks[m][b, ..., i]
        if plan is not None and self._space_time(m) and bool((sl[:, :, plan[role]] != MISS).any()):
            new = torch.full_like(sl, TGT)
            new[:, :, plan[role]] = role
            masks[m][b, ..., i] = torch.where(sl == MISS, sl, new)
        else:
            super()._assign(masks, m, b, i, role, plan, patch_size, generator)
