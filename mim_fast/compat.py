"""Loading the reference's checkpoints into mim_fast modules."""

import torch


def convert_olmoearth_state_dict(state_dict: dict, module: torch.nn.Module | None = None) -> dict:
    """A reference state dict with mim_fast's conventions applied.

    * Conv2d patch projections (``...proj.weight`` of shape ``[D, C, P, P]``) become linear
      weights ``[D, P*P*C]`` with ``permute(0, 2, 3, 1).reshape(D, -1)``.
    * When ``module`` has a projection-only target (mim_fast's default), the keys of the
      reference's full target copy outside ``target_encoder.patch_embeddings`` are dropped:
      with token-exit depth 0 the target never uses them.
    """
    out = {}
    keep_target_rest = module is None or not getattr(module, "projection_only_target", False)
    for key, value in state_dict.items():
        if key.startswith("target_encoder.") and not keep_target_rest:
            if not key.startswith("target_encoder.patch_embeddings."):
                continue
        if key.endswith("proj.weight") and value.dim() == 4:
            value = value.permute(0, 2, 3, 1).reshape(value.shape[0], -1)
        out[key] = value
    return out


def load_olmoearth_state_dict(module: torch.nn.Module, state_dict: dict, strict: bool = True):
    """Load a reference checkpoint's state dict into ``module`` (after
    :func:`convert_olmoearth_state_dict`); returns ``load_state_dict``'s result."""
    return module.load_state_dict(convert_olmoearth_state_dict(state_dict, module), strict=strict)
