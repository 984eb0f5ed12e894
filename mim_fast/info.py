"""Environment report: versions and which backends can run (``python -m mim_fast.info``)."""

import platform
import sys

import torch

from . import __version__, backends
from ._extension import build_info


def report() -> str:
    """Human-readable report of versions, the extension build and every backend's status."""
    lines = [f"mim-fast {__version__}"]
    lines.append(f"python {platform.python_version()}  torch {torch.__version__}  (CUDA {torch.version.cuda or 'none'})")
    try:
        import triton

        lines.append(f"triton {triton.__version__}")
    except ImportError:
        lines.append("triton: not installed")
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    lines.append(f"CUDA device: {cuda}")
    lines.append(f"CPU threads: {torch.get_num_threads()}")
    built = build_info()
    if built:
        lines.append(
            f"extension built against torch {built.get('torch_version')} "
            f"(CUDA sources: {'yes' if built.get('with_cuda_sources') else 'no'})"
        )
    else:
        lines.append("extension build info: not found (extension not built)")
    lines.append("backends:")
    for st in backends.available().values():
        state = "available" if st.available else "unavailable"
        where = f" on {', '.join(d for d in st.devices if d != 'any') or 'any device'}" if st.available else ""
        why = f" — {st.reason}" if st.reason else ""
        lines.append(f"  {st.name:<10} {state}{where}{why}")
    forced = backends.forced_backend()
    lines.append(f"forced backend: {forced or 'none (chosen per device)'}")
    return "\n".join(lines)


def main() -> int:
    print(report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
