"""rnn-serve: one model, many users. An OpenAI-compatible completions server with continuous batching.

    rnn-serve model.onnx --port 8000          # then POST /v1/completions as any OpenAI client does

`Scheduler` (batcher.py) steps every active row of every request as one batch per graph call; rows join after
their prompt is read and leave the moment they finish or their client goes away. `create_app` (app.py) is the
HTTP side (FastAPI on uvicorn): request checks, server-sent events, /v1/models, /health, /metrics. Sessions
travel as state tokens: a row's runtime snapshot (`rnnx.runtime.snapshot`), base64, good on any replica that
serves the same model file. See docs/serve.md.

Needs the `serve` extra (fastapi, uvicorn): `pip install "rnnx-runtime[serve]"`; never torch.
"""
