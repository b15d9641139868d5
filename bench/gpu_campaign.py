"""The GPU campaign of issue 14, one step per subcommand; `bench/gpu_check.sh` runs them in order, time-boxed.

    python bench/gpu_campaign.py facts|tests|latency|probe|train|quality --out DIR [--limit S] [--smoke]

facts: versions, nvidia-smi, and whether CUDA is usable (torch sees a GPU and runs a kernel; an onnxruntime
CUDA session really starts), kept in OUT/cuda.json for the later steps. tests: the CUDA tests, verbose.
latency (bench/gpu_latency.py): bench/latency.py's CUDA rows. probe (bench/gpu_probe.py): the token choice
inside the graph, several steps per call, timed and checked against the host's choice. train, quality
(bench/gpu_training.py): training throughput against the plain loop, and a quality run. Exit status: 0 ok,
75 skipped because there is no CUDA here, 76 skipped for want of tiny-shakespeare, anything else failed.
Without CUDA, `--smoke` runs the same code small on the CPU instead, so that a typo shows up here, not on the
GPU machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the other bench modules, run from anywhere

from gpu_common import (  # noqa: E402
    FORCE_OFF,
    OK,
    ROOT,
    SKIPPED_NO_CUDA,
    Cuda,
    cuda_state,
    probe_onnxruntime,
    probe_torch,
    write_result,
)

# ---------------------------------------------------------------------------------------------------- facts


def facts(args: argparse.Namespace) -> int:
    out: Path = args.out
    ort_ok, ort_note = probe_onnxruntime()  # after torch_first, as the campaign's other steps run
    import numpy as np
    import onnxruntime as ort
    import torch

    torch_ok, torch_note = probe_torch()
    data: dict[str, Any] = {
        "python": f"{platform.python_version()} ({sys.executable})",
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": cudnn_version(torch) if torch_ok else None,
        "gpu": torch.cuda.get_device_name(0) if torch_ok else None,
        "onnxruntime": f"{ort.__version__} ({Path(ort.__file__).parent})",
        "onnxruntime_providers": ort.get_available_providers(),
        "onnxruntime_device": ort.get_device(),
        "numpy": np.__version__,
        "torch_probe": torch_note,
        "onnxruntime_probe": ort_note,
    }
    data["rnnx"] = rnnx_probe(Path(args.work))
    data["ld_library_path"] = os.environ.get("LD_LIBRARY_PATH", "")
    data["cuda_libraries_loaded"] = loaded_libraries("libcudnn.so", "libcublas", "libcudart")
    data["nvidia_smi"] = command_output(["nvidia-smi"])
    data["nvidia_smi_query"] = command_output(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit", "--format=csv"]
    )
    cuda = Cuda(torch_ok, ort_ok, f"{torch_note}; {ort_note}")
    if os.environ.get(FORCE_OFF) == "1":
        cuda = Cuda(False, False, f"{FORCE_OFF}=1 (probes: {cuda.note})")
    (out / "cuda.json").write_text(json.dumps(asdict(cuda)) + "\n", encoding="utf-8")
    data["cuda"] = asdict(cuda)
    lines = ["## Machine facts", ""]
    lines += [f"- {key}: {value}" for key, value in data.items() if not key.startswith("nvidia_smi")]
    lines += ["", "```", data["nvidia_smi_query"], data["nvidia_smi"], "```"]
    gpu = data["gpu"] or "no GPU"
    detail = (
        f"{gpu}; Python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
        f"onnxruntime {ort.__version__}; torch CUDA: {'yes' if cuda.torch else 'no'}, onnxruntime CUDA session: "
        f"{'yes' if cuda.onnxruntime else 'no'}; rnnx Model(provider='auto'): {data['rnnx'].get('auto', '?')}"
    )
    write_result(out, "facts", "\n".join(lines), data, detail)
    return OK


def command_output(cmd: list[str]) -> str:
    if shutil.which(cmd[0]) is None:
        return f"{cmd[0]}: not found"
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return f"{cmd[0]}: timed out"
    return (done.stdout + done.stderr).strip()


def rnnx_probe(work: Path) -> dict[str, str]:
    """Where rnnx is imported from and which device a tiny exported model gets, asked each way."""
    import torch

    import rnnx.runtime
    from rnnx.export.graph import build_model_graph
    from rnnx.runtime import Model
    from rnnx.runtime.tokenizer import CharTokenizer
    from rnnx.trainer.model import RNNLM, ModelConfig

    torch.manual_seed(0)
    tokenizer = CharTokenizer.build("hello world")
    model = RNNLM(ModelConfig(cell="lstm", vocab_size=len(tokenizer.vocab), embed=8, hidden=16)).eval()
    path = work / "probe.onnx"
    path.write_bytes(build_model_graph(model, tokenizer, 17, "matmul").SerializeToString())
    found = {"imported_from": str(Path(rnnx.runtime.__file__).parent)}
    for label, kwargs in (("auto", {}), ("cuda", {"provider": "cuda"}), ("cuda_graph", {"cuda_graph": True})):
        try:
            found[label] = Model(path, **kwargs).device
        except Exception as exc:  # the runtime's typed errors; the message is the finding
            found[label] = f"error: {exc}"
    return found


# ---------------------------------------------------------------------------------------------------- tests


def cuda_test_files() -> list[str]:
    """tests/test_runtime_cuda.py and every other test file that mentions CUDA (this campaign's own excepted)."""
    first = "tests/test_runtime_cuda.py"
    others = [
        f"tests/{p.name}"
        for p in sorted((ROOT / "tests").glob("test_*.py"))
        if p.name not in ("test_runtime_cuda.py", "test_gpu_check.py") and "cuda" in p.read_text("utf-8").lower()
    ]
    return [first, *others]


def tests(args: argparse.Namespace) -> int:
    out: Path = args.out
    cuda = cuda_state(out)
    files = cuda_test_files()
    if not cuda.onnxruntime and not cuda.torch and not args.smoke:
        write_result(out, "tests", "## CUDA tests\n\nskipped: no CUDA", {"files": files}, "no CUDA: " + cuda.note)
        return SKIPPED_NO_CUDA
    cmd = [sys.executable, "-m", "pytest", *files, "-v", "-rs", "-p", "no:cacheprovider"]
    start = time.monotonic()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.monotonic() - start
    log = done.stdout + done.stderr
    (out / "pytest.log").write_text(log, encoding="utf-8")
    ends = [line.strip("= ") for line in log.splitlines() if re.match(r"^=+ .* in [\d.]+s", line)]
    result = ends[-1] if ends else f"no pytest summary line (exit {done.returncode})"
    # the -rs summary lines: "SKIPPED [n] tests/test_runtime_cuda.py:31: reason"
    cuda_skips = [line for line in log.splitlines() if line.startswith("SKIPPED") and "test_runtime_cuda" in line]
    data = {"command": " ".join(cmd), "exit": done.returncode, "result": result, "seconds": seconds, "files": files}
    md = f"## CUDA tests\n\n`{' '.join(cmd[1:])}`: {result} (exit {done.returncode}); full output: pytest.log\n"
    if done.returncode != 0:
        failed = [line for line in log.splitlines() if line.startswith(("FAILED", "ERROR"))]
        md += "\n" + "\n".join(f"- {line}" for line in failed[:40])
        write_result(out, "tests", md, data, f"{result}; {len(files)} files")
        return 1
    if not cuda.onnxruntime:
        detail = f"{result} (the CPU-side tests of {', '.join(files)}; CUDA cases skipped)"
        if cuda.torch:  # a GPU is here, yet the runtime's CUDA paths went untested: that is the finding
            write_result(out, "tests", md, data, "torch sees a GPU but no onnxruntime CUDA session: " + detail)
            return 1
        write_result(out, "tests", md, data, "no CUDA; " + detail)
        return SKIPPED_NO_CUDA
    if cuda_skips:
        md += "\n" + "\n".join(f"- {line}" for line in cuda_skips)
        write_result(out, "tests", md, data, f"{result}, but {len(cuda_skips)} CUDA skips on a CUDA machine")
        return 1
    write_result(out, "tests", md, data, f"{result} ({', '.join(files)})")
    return OK


# ----------------------------------------------------------------------------------------------------- main


def torch_first() -> None:
    """torch and its CUDA libraries before onnxruntime's: the runtime then leaves them as they are (session.py)."""
    try:
        import torch
    except ImportError:
        return
    if torch.cuda.is_available():
        with contextlib.suppress(RuntimeError):  # a cuDNN mismatch is the facts step's finding, not a crash here
            torch.backends.cudnn.version()


def cudnn_version(torch: Any) -> int | str:
    try:
        return torch.backends.cudnn.version()
    except RuntimeError as exc:  # torch refuses a cuDNN of another version than it was built for
        return f"error: {exc}"


def loaded_libraries(*names: str) -> list[str]:
    """The shared libraries of this process whose file names start with one of `names` (from /proc/self/maps)."""
    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return []
    paths = {line.split()[-1] for line in maps if line.count("/")}
    return sorted(p for p in paths if Path(p).name.startswith(names))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("facts", "tests", "latency", "probe", "train", "quality"))
    parser.add_argument("--out", type=Path, required=True, help="results folder")
    parser.add_argument("--work", help="scratch folder (default: a fresh temporary one)")
    parser.add_argument("--limit", type=float, default=600.0, help="seconds this step may take in all")
    parser.add_argument(
        "--seconds",
        type=float,
        default=60.0,
        help="per latency row, training run, quality run (probe: at most, per row)",
    )
    parser.add_argument("--smoke", action="store_true", help="without CUDA, run the code small on the CPU")
    parser.add_argument("--smoke-seconds", type=float, default=5.0, help="each CPU training smoke run")
    parser.add_argument("--set", nargs="*", default=[], help="quality run settings as key=value")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch_first()
    with tempfile.TemporaryDirectory(prefix=f"rnnx-gpu-{args.step}-") as tmp:
        args.work = args.work or tmp
        Path(args.work).mkdir(parents=True, exist_ok=True)
        if args.step == "latency":
            from gpu_latency import latency_step as step
        elif args.step == "probe":
            from gpu_probe import probe_step as step
        elif args.step in ("train", "quality"):
            from gpu_training import quality_step, train_step

            step = train_step if args.step == "train" else quality_step
        else:
            step = facts if args.step == "facts" else tests
        return step(args)


if __name__ == "__main__":
    sys.exit(main())
