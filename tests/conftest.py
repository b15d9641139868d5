"""Shared fixtures: a tiny trained default model and its exported step graph, made once per test session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def default_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in three-sentence RNN, trained exactly as `rnn-train` with no arguments trains it."""
    from rnnx.trainer.model import ModelConfig
    from rnnx.trainer.train import TrainConfig, train

    out = tmp_path_factory.mktemp("default") / "model"
    train(ModelConfig(), TrainConfig(out=out), progress=False)
    return out


@pytest.fixture(scope="session")
def default_onnx(default_model_dir: Path) -> Path:
    from rnnx.export import export_model

    return export_model(default_model_dir, opset=17).path


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread, and then do not fight other processes for the cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
