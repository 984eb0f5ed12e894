"""Shared test configuration.

Triton kernels run on CPU tensors through the interpreter, which must be switched on
before triton defines any kernel, so it is set here, before the package is imported.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

import mim_fast  # noqa: E402

settings.register_profile(
    "default", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture], derandomize=True
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def _backend_param(name: str, device: str):
    st = mim_fast.backends.status(name)
    runs = st.available and device in st.devices or name == "reference"
    # test_backends.py fails outright when MIM_FAST_REQUIRE_CPP=1 and the extension is missing.
    marks = [] if runs else [pytest.mark.skip(reason=f"{name} backend unavailable on {device}: {st.reason}")]
    return pytest.param((name, device), id=f"{name}-{device}", marks=marks)


def backend_device_params():
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    names = {"cpu": ("reference", "cpp", "triton"), "cuda": ("reference", "triton")}
    return [_backend_param(name, device) for device in devices for name in names[device]]


BACKENDS = backend_device_params()


@pytest.fixture(params=BACKENDS)
def backend(request):
    """(backend name, device) with that backend forced for the duration of the test."""
    name, device = request.param
    with mim_fast.use_backend(name):
        yield name, device
