"""Create the virtual environment and install LoRA Atelier without replacing the user's torch.

- torch already importable in the venv: kept as is (a user's CUDA build stays).
- no torch and no NVIDIA GPU: the CPU build (torch==2.13.0, from local disk on our machines; from the
  CPU wheel index elsewhere), never the multi-GB CUDA default.
- no torch and an NVIDIA GPU: pip's default torch (a CUDA build).
Then the project itself, editable, with the test extras.
"""
import argparse
import shutil
import subprocess
import sys
from pathlib import Path

CPU_TORCH = "torch==2.13.0"


def run(*args: str) -> None:
    print("+", " ".join(args), flush=True)
    subprocess.run(args, check=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--venv", default=".venv")
    ap.add_argument("--no-test-extras", action="store_true")
    a = ap.parse_args()
    venv = Path(a.venv)
    py = venv / "bin" / "python"
    if not py.exists():
        run(sys.executable, "-m", "venv", str(venv))
    has_torch = subprocess.run([str(py), "-c", "import torch"], capture_output=True).returncode == 0
    if not has_torch:
        if shutil.which("nvidia-smi"):
            run(str(py), "-m", "pip", "install", "torch")
        else:
            try:
                run(str(py), "-m", "pip", "install", CPU_TORCH)
            except subprocess.CalledProcessError:
                run(str(py), "-m", "pip", "install", CPU_TORCH,
                    "--index-url", "https://download.pytorch.org/whl/cpu")
    before = subprocess.run([str(py), "-c", "import torch; print(torch.__version__)"],
                            capture_output=True, text=True).stdout.strip()
    target = "." if a.no_test_extras else ".[test]"
    run(str(py), "-m", "pip", "install", "-e", target)
    after = subprocess.run([str(py), "-c", "import torch; print(torch.__version__)"],
                           capture_output=True, text=True).stdout.strip()
    if before != after:
        sys.exit(f"install.py: a dependency replaced torch {before} with {after}; pin it and retry")
    print(f"installed; torch {after}")


if __name__ == "__main__":
    main()
