"""Build hook for the compiled GC op (csrc/). Metadata lives in pyproject.toml.

    pip install --no-build-isolation -e .

builds two extensions, following pytorch/extension-cpp:
  gcrepro._C       CPU kernels and the op schemas (always; CppExtension);
  gcrepro._C_cuda  CUDA kernels (only when a CUDA toolkit is found and torch is a CUDA build).

Environment:
  CUDA_HOME             toolkit folder; when unset it is found from the `nvcc` on PATH, following
                        a wrapper script (`exec /usr/local/cuda-13.0/bin/nvcc "$@"`) to the real one.
  GCREPRO_CUDA=0|1      0: skip the CUDA extension; 1: require it (fail when no toolkit is found).
  TORCH_CUDA_ARCH_LIST  GPU architectures, default "9.0" (Hopper); e.g. "8.0;8.6;9.0".
  MAX_JOBS              parallel compile jobs (ninja).
"""
from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"


def _nvcc_behind(path: Path) -> Path:
    """The real nvcc binary: `path` itself, or the nvcc a wrapper script execs."""
    real = path.resolve()
    with open(real, "rb") as f:
        is_script = f.read(2) == b"#!"
    if is_script:
        match = re.search(r"(/[^\s\"']*/bin/nvcc)\b", real.read_text(errors="replace"))
        if match and Path(match.group(1)).resolve() != real:
            return Path(match.group(1)).resolve()
    return real


def find_cuda_home() -> str | None:
    """CUDA toolkit folder from CUDA_HOME/CUDA_PATH, the nvcc on PATH, or /usr/local/cuda."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    nvcc = shutil.which("nvcc")
    if nvcc is not None:
        real = _nvcc_behind(Path(nvcc))
        if real.exists():
            return str(real.parent.parent)  # <home>/bin/nvcc
    if Path("/usr/local/cuda/bin/nvcc").exists():
        return "/usr/local/cuda"
    return None


# torch.utils.cpp_extension reads CUDA_HOME when it is imported: resolve it first, because torch
# would otherwise guess the folder of the nvcc wrapper script (/usr/local) and fail.
_cuda_home = find_cuda_home()
if _cuda_home is not None:
    os.environ["CUDA_HOME"] = _cuda_home
os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _want_cuda() -> bool:
    flag = os.environ.get("GCREPRO_CUDA", "")
    if flag == "0":
        return False
    reason = None
    if torch.version.cuda is None:
        reason = f"torch {torch.__version__} is not a CUDA build"
    elif _cuda_home is None or not (Path(_cuda_home) / "bin" / "nvcc").exists():
        reason = f"no CUDA toolkit found (CUDA_HOME={_cuda_home!r}, no nvcc on PATH)"
    if reason is None:
        return True
    if flag == "1":
        raise RuntimeError(f"GCREPRO_CUDA=1 but {reason}")
    print(f"gcrepro setup.py: building the CPU op only: {reason}", file=sys.stderr)
    return False


def _rel(paths) -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for p in paths)


def get_extensions():
    # -fopenmp: at::parallel_for is inline OpenMP code in torch's headers; without the flag it
    # would run on one thread. libgomp is the one torch already loaded.
    openmp = [] if sys.platform == "darwin" or os.name == "nt" else ["-fopenmp"]
    cxx = ["-O3", *openmp]
    exts = [
        CppExtension(
            "gcrepro._C",
            _rel([CSRC / "gc_ops.cpp", *(CSRC / "cpu").glob("*.cpp")]),
            include_dirs=[str(CSRC)],
            extra_compile_args={"cxx": cxx},
            extra_link_args=openmp,
        )
    ]
    if _want_cuda():
        exts.append(
            CUDAExtension(
                "gcrepro._C_cuda",
                _rel((CSRC / "cuda").glob("*.cu")),  # one .cu file: keeps the nvcc time low
                include_dirs=[str(CSRC)],
                extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "-lineinfo"]},
            )
        )
    return exts


setup(ext_modules=get_extensions(), cmdclass={"build_ext": BuildExtension})
