"""Tokenization configs: which bands each token of a modality embeds.

A tokenization maps a modality to band groups; each group becomes one token (a "band
set") per spatial-temporal location. Modalities without an override use their default
band sets. :func:`band_set_indices` accepts any of

* None (defaults everywhere),
* :class:`TokenizationConfig` (this package),
* a plain dict ``{modality: [[band names], ...]}``,
* the reference's ``TokenizationConfig`` (anything with an ``overrides`` mapping whose
  values are band-group lists or objects with a ``band_groups`` attribute).
"""

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..data.modalities import get_modality


@dataclass
class TokenizationConfig:
    """Band-group overrides per modality: ``{modality: [[band names], ...]}``."""

    overrides: dict[str, list[list[str]]] = field(default_factory=dict)

    def band_groups(self, modality: str) -> list[list[str]]:
        """Band groups of ``modality`` (its default band sets without an override)."""
        if modality in self.overrides:
            return [list(g) for g in self.overrides[modality]]
        return [list(g) for g in get_modality(modality).band_sets]

    def get_bandset_indices(self, modality: str) -> list[list[int]]:
        """Channel indices of every band group of ``modality``."""
        order = get_modality(modality).band_order
        out = []
        for group in self.band_groups(modality):
            unknown = [b for b in group if b not in order]
            if unknown:
                raise ValueError(
                    f"tokenization_config: unknown bands {unknown} for modality {modality!r}; its bands are {list(order)}"
                )
            out.append([order.index(b) for b in group])
        return out

    def get_num_bandsets(self, modality: str) -> int:
        return len(self.band_groups(modality))


def _groups_of(value) -> list[list[str]]:
    groups = getattr(value, "band_groups", value)
    if isinstance(groups, str) or not all(isinstance(g, (list, tuple)) for g in groups):
        raise TypeError(f"tokenization_config: expected a list of band-name lists, got {value!r}")
    return [list(g) for g in groups]


def as_tokenization_config(config) -> TokenizationConfig:
    """Coerce None, a dict, this package's or the reference's config to :class:`TokenizationConfig`."""
    if config is None:
        return TokenizationConfig()
    if isinstance(config, TokenizationConfig):
        return config
    overrides = config if isinstance(config, Mapping) else getattr(config, "overrides", None)
    if not isinstance(overrides, Mapping):
        raise TypeError(
            "tokenization_config: expected None, a dict {modality: [[band names], ...]}, a "
            f"mim_fast TokenizationConfig or an object with an `overrides` mapping, got {type(config).__name__}"
        )
    out = TokenizationConfig({str(getattr(k, "name", k)): _groups_of(v) for k, v in overrides.items()})
    for modality in out.overrides:
        out.get_bandset_indices(modality)  # validates modality and band names now, not at forward time
    return out


def band_set_indices(config, modality: str) -> list[list[int]]:
    """Channel indices of every band set of ``modality`` under ``config`` (any accepted form)."""
    return as_tokenization_config(config).get_bandset_indices(modality)
