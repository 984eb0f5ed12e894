"""Loading of the compiled extension ``mim_fast._C`` (optional; never fatal).

The extension registers the ``cpp`` backend's CPU kernels as ``torch.ops.mim_fast.cpu_*``.
If it is missing or fails to load, the package still imports, warns once and reports the
reason through ``mim_fast.backends.available()`` and ``mim-fast info``.
"""

import json
import os
import warnings
from functools import lru_cache

import torch


@lru_cache(maxsize=None)
def load_status() -> tuple[bool, str]:
    """Try to load the extension once. Returns (loaded, reason-if-not)."""
    if os.environ.get("MIM_FAST_NO_EXT", "0") == "1":
        return False, "disabled by MIM_FAST_NO_EXT=1"
    try:
        from . import _C  # noqa: F401  (importing runs the TORCH_LIBRARY registrations)
    except ImportError as err:
        reason = f"compiled extension mim_fast._C not importable ({err}); reinstall with `pip install --no-build-isolation .`"
        warnings.warn(f"mim_fast: {reason}. Falling back to the reference backend on CPU.", stacklevel=3)
        return False, reason
    built = build_info().get("torch_version")
    if built and built.split("+")[0] != torch.__version__.split("+")[0]:
        warnings.warn(
            f"mim_fast._C was built against torch {built} but torch {torch.__version__} is installed; "
            "rebuild with `pip install --no-build-isolation .` if ops misbehave.",
            stacklevel=3,
        )
    return True, ""


def build_info() -> dict:
    """What the extension was compiled against (written by setup.py), or {} if unknown."""
    path = os.path.join(os.path.dirname(__file__), "_build_info.json")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}
