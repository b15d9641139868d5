"""Prometheus text-format metrics, kept by hand (a few counters and histograms need no client library).

The scheduler thread updates them and the event loop renders them; each update is a few plain int/float
operations, so a reading may be a step behind but is never torn in a way that matters for a dashboard.
"""

from __future__ import annotations

import bisect
from collections import Counter as Tally

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Histogram:
    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...]) -> None:
        self.name, self.help, self.buckets = name, help_text, buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one: above every bucket (+Inf only)
        self.total = 0.0

    def observe(self, value: float, count: int = 1) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += count
        self.total += value * count

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        running = 0
        for bound, count in zip(self.buckets, self.counts):
            running += count
            lines.append(f'{self.name}_bucket{{le="{bound:g}"}} {running}')
        running += self.counts[-1]
        lines += [f'{self.name}_bucket{{le="+Inf"}} {running}', f"{self.name}_sum {self.total:.6f}"]
        lines.append(f"{self.name}_count {running}")
        return lines


class Metrics:
    """Everything /metrics shows."""

    def __init__(self, max_batch: int) -> None:
        sizes = tuple(b for b in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024) if b < max_batch) + (max_batch,)
        self.requests: Tally[str] = Tally()  # by HTTP status code
        self.tokens_generated = 0
        self.prompt_tokens = 0
        self.active_rows = 0
        self.reading_rows = 0  # their prompts being read, a piece per step: neither waiting nor stepping yet
        self.queued_rows = 0
        self.batch_size = Histogram("rnnx_batch_size", "Rows in each batched graph call.", sizes)
        self.ttft = Histogram(
            "rnnx_time_to_first_token_seconds", "From a request's arrival to its first token.", LATENCY_BUCKETS
        )
        self.itl = Histogram(
            "rnnx_inter_token_latency_seconds", "Between two tokens of one row (per generated token).", LATENCY_BUCKETS
        )

    def render(self) -> str:
        lines = [
            "# HELP rnnx_requests_total HTTP responses by status code (counted as each response starts).",
            "# TYPE rnnx_requests_total counter",
        ]
        lines += [f'rnnx_requests_total{{code="{code}"}} {n}' for code, n in sorted(self.requests.items())]
        for name, kind, help_text, value in (
            ("rnnx_tokens_generated_total", "counter", "Tokens generated, all rows.", self.tokens_generated),
            ("rnnx_prompt_tokens_total", "counter", "Prompt tokens read, all rows.", self.prompt_tokens),
            ("rnnx_active_rows", "gauge", "Rows in the running batch.", self.active_rows),
            ("rnnx_reading_rows", "gauge", "Rows whose prompts are being read.", self.reading_rows),
            ("rnnx_queue_length", "gauge", "Rows waiting for a place in the batch.", self.queued_rows),
        ):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}"]
        for histogram in (self.batch_size, self.ttft, self.itl):
            lines += histogram.render()
        return "\n".join(lines) + "\n"
