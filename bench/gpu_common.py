"""What the GPU campaign's steps share: where results go, whether CUDA is usable, which text to train on.

The steps are in bench/gpu_campaign.py (facts, tests), bench/gpu_latency.py and bench/gpu_training.py;
bench/gpu_check.sh runs them. Each step writes OUT/<step>.md (what a reader wants), OUT/<step>.json (the
numbers) and OUT/<step>.detail (one line for summary.md), and exits OK, SKIPPED_NO_CUDA or SKIPPED_NO_DATA, or
anything else for a failure.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
OK, SKIPPED_NO_CUDA, SKIPPED_NO_DATA = 0, 75, 76  # gpu_check.sh maps these to ok / skipped: no CUDA / no data
FORCE_OFF = "RNNX_GPU_CHECK_NO_CUDA"  # =1: behave as if there were no GPU (the test suite's rehearsal)
SHAKESPEARE = "tinyshakespeare.txt"
DATA_PLACES = (ROOT / ".wp" / SHAKESPEARE, ROOT.parent / "shared" / "data" / SHAKESPEARE)  # carried, or here
STORY = BENCH / "data" / "detective_story.txt"


@dataclass(frozen=True)
class Cuda:
    torch: bool  # torch sees a GPU and ran a kernel on it
    onnxruntime: bool  # an onnxruntime CUDA session came up (its providers start with CUDA)
    note: str = ""


def write_result(out: Path, step: str, markdown: str, data: dict[str, Any], detail: str) -> None:
    (out / f"{step}.md").write_text(markdown.rstrip() + "\n", encoding="utf-8")
    (out / f"{step}.json").write_text(json.dumps(data, indent=1, default=str) + "\n", encoding="utf-8")
    (out / f"{step}.detail").write_text(detail.replace("\n", " ").replace("|", "/") + "\n", encoding="utf-8")
    print(f"{step}: {detail}", flush=True)


def probe_onnxruntime() -> tuple[bool, str]:
    """Whether a CUDA session really starts (onnxruntime-gpu lists CUDA even where it then falls back)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False, f"onnxruntime {ort.__version__} has no CUDA provider (the CPU build?)"
    torch = sys.modules.get("torch")
    if hasattr(ort, "preload_dlls") and getattr(getattr(torch, "version", None), "cuda", None) is None:
        ort.preload_dlls()  # as the runtime does (session.py): only where no CUDA torch brought its libraries
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    try:
        session = ort.InferenceSession(
            proto.SerializeToString(), providers=["CUDAExecutionProvider", "CPUExecutionProvider"]
        )
        import numpy as np

        session.run(None, {"x": np.ones(2, np.float32)})
    except Exception as exc:  # onnxruntime's own exception types; the message is the finding
        return False, f"the CUDA session failed: {type(exc).__name__}: {exc}"
    got = session.get_providers()
    return got[0] == "CUDAExecutionProvider", f"session providers {got}"


def probe_torch() -> tuple[bool, str]:
    import torch

    if not torch.cuda.is_available():
        return False, f"torch {torch.__version__} sees no GPU"
    try:
        value = float((torch.ones(4, device="cuda") * 2).sum())
    except Exception as exc:  # a driver or architecture mismatch shows up here
        return False, f"torch sees a GPU but a kernel failed: {type(exc).__name__}: {exc}"
    return value == 8.0, f"{torch.cuda.get_device_name(0)}, torch CUDA {torch.version.cuda}"


def cuda_state(out: Path) -> Cuda:
    """What `facts` found (OUT/cuda.json), or a fresh probe when it did not run."""
    if os.environ.get(FORCE_OFF) == "1":
        return Cuda(False, False, f"{FORCE_OFF}=1")
    saved = out / "cuda.json"
    if saved.is_file():
        return Cuda(**json.loads(saved.read_text("utf-8")))
    ort_ok, ort_note = probe_onnxruntime()
    torch_ok, torch_note = probe_torch()
    return Cuda(torch_ok, ort_ok, f"{torch_note}; {ort_note}")


def find_text(work: Path) -> tuple[Path, str, bool]:
    """The training text: (path, how it was found, whether it is tiny-shakespeare)."""
    given = os.environ.get("RNNX_GPU_DATA")
    for place in ([Path(given)] if given else []) + list(DATA_PLACES):
        if place.is_file():
            return place, f"{place} ({place.stat().st_size / 2**20:.2f} MiB)", place.name == SHAKESPEARE
    # ../shared does not travel to the GPU machine; for speed any text of about the same size will do
    story = STORY.read_text("utf-8")
    path = work / "detective_story_x100.txt"
    path.write_text(story * (2**20 // len(story) + 1), encoding="utf-8")
    return path, f"{STORY.relative_to(ROOT)} repeated to 1 MiB (no tiny-shakespeare here)", False
