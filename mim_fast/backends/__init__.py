"""Backend registry: which implementation runs an op, and why the others cannot.

Backends:
    ``reference``  pure PyTorch, any device (the semantics; always available).
    ``cpp``        compiled extension ``mim_fast._C`` (CPU tensors, OpenMP).
    ``triton``     Triton kernels in ``mim_fast.kernels`` (CUDA tensors; CPU tensors only
                   under ``TRITON_INTERPRET=1``, for testing).

Selection per call, from the device of the op's tensors: CUDA -> ``triton``,
CPU -> ``cpp``, falling back to ``reference`` when the preferred one is unavailable.
``MIM_FAST_BACKEND=reference|cpp|triton`` or ``with mim_fast.use_backend(name):`` force a
backend; forcing one that cannot run on the tensors' device raises ``RuntimeError``.
"""

import contextlib
import contextvars
import os
from dataclasses import dataclass
from types import ModuleType

import torch

from .._extension import load_status

NAMES = ("reference", "cpp", "triton")
_forced: contextvars.ContextVar[str | None] = contextvars.ContextVar("mim_fast_backend", default=None)


@dataclass(frozen=True)
class BackendStatus:
    """Whether a backend can run, on which device types, and the reason if it cannot."""

    name: str
    available: bool
    devices: tuple[str, ...]
    reason: str = ""


def _triton_status() -> BackendStatus:
    try:
        import triton  # noqa: F401
    except ImportError as err:
        return BackendStatus("triton", False, (), f"triton is not installed ({err}); `pip install triton`")
    interpret = os.environ.get("TRITON_INTERPRET", "0") == "1"
    devices = ("cuda",) if torch.cuda.is_available() else ()
    if interpret:
        devices = devices + ("cpu",)
    if not devices:
        return BackendStatus(
            "triton", False, (), "no CUDA device (set TRITON_INTERPRET=1 to run the kernels on CPU tensors, slowly)"
        )
    return BackendStatus("triton", True, devices, "CPU tensors run in the Triton interpreter" if interpret else "")


def status(name: str) -> BackendStatus:
    """Status of one backend by name."""
    if name == "reference":
        return BackendStatus("reference", True, ("cpu", "cuda", "any"))
    if name == "cpp":
        loaded, reason = load_status()
        return BackendStatus("cpp", loaded, ("cpu",) if loaded else (), reason)
    if name == "triton":
        return _triton_status()
    raise ValueError(f"backend: unknown backend {name!r}; choose one of {', '.join(NAMES)}")


def available() -> dict[str, BackendStatus]:
    """Status of every backend: ``{name: BackendStatus(available, devices, reason)}``."""
    return {name: status(name) for name in NAMES}


@contextlib.contextmanager
def use_backend(name: str):
    """Force a backend for every op called inside the ``with`` block.

    Example::

        with mim_fast.use_backend("reference"):
            y, keep = mim_fast.band_dropout(x, 0.3)
    """
    status(name)  # validates the name
    token = _forced.set(name)
    try:
        yield
    finally:
        _forced.reset(token)


def forced_backend() -> str | None:
    """The backend forced by ``use_backend`` or ``MIM_FAST_BACKEND``, if any."""
    name = _forced.get()
    if name is None:
        name = os.environ.get("MIM_FAST_BACKEND") or None
        if name is not None and name not in NAMES:
            raise ValueError(f"MIM_FAST_BACKEND: unknown backend {name!r}; choose one of {', '.join(NAMES)}")
    return name


def _can_run(st: BackendStatus, device_type: str) -> bool:
    return st.available and (device_type in st.devices or "any" in st.devices)


def select_name(device: torch.device) -> str:
    """Name of the backend that runs an op whose tensors live on ``device``."""
    forced = forced_backend()
    if forced is not None:
        st = status(forced)
        if not _can_run(st, device.type):
            why = st.reason or f"it does not run on {device.type} tensors"
            raise RuntimeError(f"backend {forced!r} was forced but cannot run on {device.type} tensors: {why}")
        return forced
    preferred = "triton" if device.type == "cuda" else "cpp" if device.type == "cpu" else "reference"
    return preferred if _can_run(status(preferred), device.type) else "reference"


def select(device: torch.device) -> ModuleType:
    """Module implementing the kernel interface for ``device`` (see ``mim_fast.backends.reference``)."""
    return module(select_name(device))


def module(name: str) -> ModuleType:
    """The kernel-interface module of a backend, by name."""
    if name == "cpp":
        from . import cpp as impl
    elif name == "triton":
        from . import triton as impl
    else:
        from . import reference as impl
    return impl


__all__ = ["BackendStatus", "NAMES", "available", "forced_backend", "module", "select", "select_name", "status", "use_backend"]
