"""The training state a checkpoint holds as tensors, and back: one owner for both directions.

`state_tensors` names the weights (`model.*`), the weight average (`ema.*`), AdamW's moments (`optim.<i>.*`), the
random state (`rng.*`) and the carried TBPTT state (`carry.<i>`); `restore` loads them into a fresh model and
optimizer, checking every shape and that every number is finite, since a checkpoint is a file from outside.
"""

from __future__ import annotations

import torch

from rnnx.runtime.errors import ModelFileError
from rnnx.trainer.averaging import WeightAverage
from rnnx.trainer.checkpoint import describe_error, plain_tensors
from rnnx.trainer.model import RNNLM


def state_tensors(
    model: RNNLM, optimizer: torch.optim.Optimizer, carry: tuple, average: WeightAverage | None
) -> dict[str, torch.Tensor]:
    """Weights, weight average, AdamW moments, random state and the carried TBPTT state, by name."""
    tensors = {f"model.{k}": v for k, v in plain_tensors(model.state_dict()).items()}
    if average is not None:
        tensors.update(average.tensors())
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"optim.{index}.{key}"] = value
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available() and model.head.weight.is_cuda:
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    for i, s in enumerate(carry):
        tensors[f"carry.{i}"] = s.float()
    return tensors


def _check_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Every moment the checkpoint brought back has its weight's shape (AdamW would fail mid-step otherwise)."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                if key != "step" and value.shape != param.shape:
                    shapes = f"{tuple(value.shape)} for a weight of {tuple(param.shape)}"
                    raise ValueError(f"optimizer {key} of shape {shapes}")


def _check_carry(model: RNNLM, carry: tuple[torch.Tensor, ...]) -> None:
    config = model.config
    if len(carry) != (2 if config.cell == "lstm" else 1):
        raise ValueError(f"{len(carry)} carried states for an {config.cell.upper()}")
    for s in carry:
        if s.dim() != 3 or s.size(0) != config.layers or s.size(2) != config.hidden:
            raise ValueError(f"a carried state of shape {tuple(s.shape)} for {config.layers} x {config.hidden}")


def restore(
    model: RNNLM,
    optimizer: torch.optim.Optimizer,
    average: WeightAverage | None,
    tensors: dict[str, torch.Tensor],
) -> tuple:
    """Load weights, weight average, optimizer and random state from a checkpoint; returns the TBPTT state.

    The optimizer's settings come from the run's settings (they were saved from them), only its state from the file.
    """
    device = model.head.weight.device
    bad = [name for name, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise ModelFileError(f"the checkpoint holds numbers that are not finite ({bad[0]}): start a fresh run")
    try:
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        if average is not None:
            average.load(tensors)
        state: dict[int, dict[str, torch.Tensor]] = {}
        for name, value in tensors.items():
            if name.startswith("optim."):
                _, index, key = name.split(".", 2)
                state.setdefault(int(index), {})[key] = value
        optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})
        _check_optimizer_state(optimizer)
        torch.set_rng_state(tensors["rng.cpu"])
        if "rng.cuda" in tensors and device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng.cuda"])
        count = sum(1 for k in tensors if k.startswith("carry."))
        carry = tuple(tensors[f"carry.{i}"].to(device) for i in range(count))
        _check_carry(model, carry)
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise ModelFileError(
            f"the checkpoint does not fit its own settings ({describe_error(exc)}): start a fresh run"
        ) from None
    return carry
