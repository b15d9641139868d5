"""RowSampler and choose_rows: a row of a continuous batch draws exactly what the runtime's Sampler draws for it,
whatever rows (and settings) share its batch."""

from __future__ import annotations

import numpy as np

from rnnx.runtime.sampling import RowSampler, Sampler, SamplingConfig, choose_rows

VOCAB = 50
CONFIGS = [
    SamplingConfig(temperature=1.0, rng_seed=1),
    SamplingConfig(temperature=0.7, top_k=5, rng_seed=2),
    SamplingConfig(temperature=1.3, top_p=0.8, rng_seed=3),
    SamplingConfig(repetition_penalty=1.7),
    SamplingConfig(temperature=1.0, repetition_penalty=2.0, rng_seed=4),
]


def test_each_row_draws_what_its_own_sampler_draws_among_other_rows() -> None:
    rng = np.random.default_rng(0)
    steps = [rng.normal(size=(len(CONFIGS) * 2, VOCAB)).astype(np.float32) * 3 for _ in range(40)]
    rows = [RowSampler(c, VOCAB, row=r) for r in range(2) for c in CONFIGS]  # two rows per setting, mixed
    alone = [(Sampler(c, r + 1, VOCAB), r) for r in range(2) for c in CONFIGS]  # row r of a batch of r + 1
    for (sampler, r), row in zip(alone, rows):
        sampler.remember(r, [3, 4])  # a prompt: the penalty counts it
        row.remember([3, 4])
    for logits in steps:
        got = choose_rows(logits.copy(), rows)
        for i, (sampler, r) in enumerate(alone):
            active = np.arange(r + 1) == r  # only row r draws
            assert got[i] == sampler.choose(np.repeat(logits[i : i + 1], r + 1, axis=0), active)[r]


def test_row_zero_continues_a_restored_state_and_bias_moves_the_choice() -> None:
    config = SamplingConfig(temperature=1.0, rng_seed=9)
    first = RowSampler(config, VOCAB)
    logits = np.random.default_rng(1).normal(size=(6, VOCAB)).astype(np.float32)
    expected = [int(choose_rows(logits[i : i + 1].copy(), [first])[0]) for i in range(6)]
    again = RowSampler(config, VOCAB)
    got = [int(choose_rows(logits[i : i + 1].copy(), [again])[0]) for i in range(3)]
    resumed = RowSampler(SamplingConfig(temperature=1.0), VOCAB)  # another seed, then the saved stream
    resumed.restore(*again.state())
    got += [int(choose_rows(logits[i : i + 1].copy(), [resumed])[0]) for i in range(3, 6)]
    assert got == expected
    greedy = SamplingConfig()
    top = int(logits[0, 1:].argmax()) + 1
    pushed = RowSampler(greedy, VOCAB, bias={top: -100.0})
    assert choose_rows(logits[:1].copy(), [RowSampler(greedy, VOCAB)])[0] == top
    assert choose_rows(logits[:1].copy(), [pushed])[0] != top


def test_a_request_takes_the_model_files_sampling_defaults_unless_it_sets_them(tmp_path) -> None:
    import torch

    from rnnx.export.graph import build_step_graph
    from rnnx.runtime import Model, contract
    from rnnx.runtime.serve.api import CompletionRequest, plan_rows
    from rnnx.runtime.serve.config import ServeConfig
    from rnnx.runtime.tokenizer import CharTokenizer
    from rnnx.trainer.model import RNNLM, ModelConfig

    torch.manual_seed(0)
    tokenizer = CharTokenizer.build("the lazy dog")
    graph = build_step_graph(RNNLM(ModelConfig(vocab_size=len(tokenizer.vocab), embed=4, hidden=8)), tokenizer, 17)
    graph.metadata_props.add(key=contract.META_GENERATION, value='{"repetition_penalty": 1.3, "top_k": 5}')
    (tmp_path / "m.onnx").write_bytes(graph.SerializeToString())
    model, config = Model(tmp_path / "m.onnx", provider="cpu"), ServeConfig(model_name="m")

    def settings(**body) -> SamplingConfig:
        return plan_rows(CompletionRequest(prompt="the", **body), model, config)[0].sampler.config

    assert (settings().repetition_penalty, settings().top_k, settings().temperature) == (1.3, 5, 1.0)
    assert (settings(repetition_penalty=1.0, top_k=0).repetition_penalty, settings(top_k=0).top_k) == (1.0, 0)
