import os
import subprocess
import sys
import tempfile

import pytest
import torch

import mim_fast
from mim_fast import backends


def test_available_reports_every_backend_with_a_reason():
    table = backends.available()
    assert set(table) == {"reference", "cpp", "triton"}
    assert table["reference"].available
    for st in table.values():
        assert st.available or st.reason, f"{st.name} is unavailable without a reason"


def test_cpp_backend_available_when_required():
    if os.environ.get("MIM_FAST_REQUIRE_CPP") != "1":
        pytest.skip("MIM_FAST_REQUIRE_CPP is not set")
    st = backends.status("cpp")
    assert st.available, st.reason


def test_automatic_selection_prefers_compiled_backends():
    cpu = backends.select_name(torch.device("cpu"))
    assert cpu == ("cpp" if backends.status("cpp").available else "reference")


def test_use_backend_forces_and_restores(monkeypatch):
    monkeypatch.delenv("MIM_FAST_BACKEND", raising=False)
    before = backends.select_name(torch.device("cpu"))
    with mim_fast.use_backend("reference"):
        assert backends.select_name(torch.device("cpu")) == "reference"
    assert backends.select_name(torch.device("cpu")) == before


def test_environment_variable_forces_a_backend(monkeypatch):
    monkeypatch.setenv("MIM_FAST_BACKEND", "reference")
    assert backends.select_name(torch.device("cpu")) == "reference"
    monkeypatch.setenv("MIM_FAST_BACKEND", "fastest")
    with pytest.raises(ValueError, match="MIM_FAST_BACKEND"):
        backends.select_name(torch.device("cpu"))


def test_unknown_backend_name_is_rejected():
    with pytest.raises(ValueError, match="backend"):
        with mim_fast.use_backend("cuda-magic"):
            pass


def test_forcing_a_backend_that_cannot_run_raises(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    if torch.cuda.is_available():
        pytest.skip("triton runs on this machine")
    with mim_fast.use_backend("triton"):
        with pytest.raises(RuntimeError, match="triton"):
            mim_fast.band_dropout_mask(2, 3, 0.5)


def test_info_report_lists_backends_and_versions():
    from mim_fast.info import report

    text = report()
    assert f"torch {torch.__version__}" in text
    for name in ("reference", "cpp", "triton"):
        assert name in text


def _run(args, cwd=None, **env):
    """Run in a neutral directory so the installed package, not the source tree, is imported."""
    full_env = {**os.environ, **env}
    return subprocess.run(args, capture_output=True, text=True, env=full_env, timeout=300, cwd=cwd or tempfile.gettempdir())


def test_cli_info_and_module_entry_point():
    result = _run([sys.executable, "-m", "mim_fast.info"])
    assert result.returncode == 0, result.stderr
    assert "backends:" in result.stdout and "reference" in result.stdout
    result = _run([sys.executable, "-m", "mim_fast.cli", "info"])
    assert result.returncode == 0 and "backends:" in result.stdout


def test_cli_help_and_bad_command():
    result = _run([sys.executable, "-m", "mim_fast.cli", "--help"])
    assert result.returncode == 0 and "bench" in result.stdout and "info" in result.stdout
    result = _run([sys.executable, "-m", "mim_fast.cli", "frobnicate"])
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_import_without_extension_falls_back_to_reference():
    code = (
        "import torch, mim_fast;"
        "st = mim_fast.backends.status('cpp'); assert not st.available and 'MIM_FAST_NO_EXT' in st.reason;"
        "y, keep = mim_fast.band_dropout(torch.randn(2, 3, 4), 0.5);"
        "print(mim_fast.backends.select_name(torch.device('cpu')))"
    )
    result = _run([sys.executable, "-c", code], MIM_FAST_NO_EXT="1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "reference"


def test_kernels_are_not_a_top_level_package(tmp_path):
    import importlib.util

    assert importlib.util.find_spec("mim_fast.kernels") is not None
    result = _run([sys.executable, "-c", "import kernels"], cwd=tmp_path, PYTHONPATH="")
    assert result.returncode != 0
