"""Request traces on disk: format detection, reading, and prefix reuse for traces without hashes.

Formats (detected from the file's content, not its name):

- Mooncake JSONL (`mooncake`): one JSON object per line with `timestamp` (ms), `input_length`,
  `output_length` and `hash_ids` (one id per 512-token prefix block).
- Splitwise / Vidur CSV (`splitwise`): header `arrived_at,num_prefill_tokens,num_decode_tokens`,
  `arrived_at` in seconds (`../shared/traces/splitwise_conv.csv`, the Azure conversation trace as
  processed in microsoft/vidur).
- Azure LLM inference trace CSV (`azure`): header `TIMESTAMP,ContextTokens,GeneratedTokens`,
  `TIMESTAMP` a date-time such as `2023-11-16 18:15:46.6805900` (Azure/AzurePublicDataset).

Anything else is an error naming the formats. CSV columns may come in any order; extra columns
are ignored.

Prefix reuse without hashes (`ConversationReuse`): the CSV traces say nothing about shared
prefixes, so reuse is modelled as conversations (the trace is a chat service: a later turn
resends the whole history). Going through the trace in order, a request continues an earlier
conversation with probability `continue_fraction` (default 0.5), if one of the last
`window` (64) conversations has a history (its last prompt + answer tokens) shorter than this
request's prompt; it picks one of those at random and reuses its history, rounded down to whole
KV blocks, as a prefix (fetched from the KV host that holds that conversation). Otherwise it
starts a new conversation and reuses nothing. The random choices are seeded by a constant, not by
the run's seed: reuse is a property of the trace (as Mooncake's hashes are), and a run's seed
picks the trace window. docs/hardware.md gives the resulting reuse on splitwise_conv.csv.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from ..errors import MfsError

FORMATS = ("mooncake", "splitwise", "azure")
CSV_COLUMNS = {
    "splitwise": ("arrived_at", "num_prefill_tokens", "num_decode_tokens"),
    "azure": ("TIMESTAMP", "ContextTokens", "GeneratedTokens"),
}
REUSE_SEED = 0x5EED
FORMAT_HELP = (
    "expected Mooncake JSONL (timestamp, input_length, output_length, hash_ids per line), a CSV "
    "with header arrived_at,num_prefill_tokens,num_decode_tokens (Splitwise/Vidur) or "
    "TIMESTAMP,ContextTokens,GeneratedTokens (Azure LLM inference trace)"
)


@dataclass(frozen=True, slots=True)
class TraceRecord:
    t_s: float  # arrival, seconds (the trace's own clock)
    input_tokens: int
    output_tokens: int
    hashes: tuple[int, ...] | None  # prefix block ids; None: the format has none


def _check(path: Path) -> None:
    if not path.is_file():
        raise MfsError(
            f"trace not found at {path}: pass --trace PATH (a Mooncake .jsonl or a Splitwise/Azure "
            ".csv), or use a poisson workload (--workload poisson)"
        )


def trace_format(path: Path | str) -> str:
    """`mooncake`, `splitwise` or `azure`, from the first non-empty line."""
    path = Path(path)
    _check(path)
    try:
        with path.open(newline="") as fh:
            first = next((ln for ln in fh if ln.strip()), "")
    except (OSError, UnicodeDecodeError) as exc:
        raise MfsError(f"cannot read the trace {path}: {exc}") from None
    if first.lstrip().startswith("{"):
        return "mooncake"
    header = {c.strip() for c in next(csv.reader([first]), [])}
    for fmt, cols in CSV_COLUMNS.items():
        if set(cols) <= header:
            return fmt
    raise MfsError(f"{path}: not a known trace format (first line {first.strip()[:60]!r}): " f"{FORMAT_HELP}")


def _azure_time(s: str) -> float:
    s = s.strip()
    if "." in s:  # Azure writes 7 fractional digits; datetime takes 6
        head, frac = s.split(".", 1)
        s = f"{head}.{frac[:6]}"
    return datetime.fromisoformat(s).timestamp()


def read_records(path: Path | str, limit: int | None = None) -> Iterator[TraceRecord]:
    """The trace's requests in file order (at most `limit`)."""
    path = Path(path)
    fmt = trace_format(path)
    n = 0
    with path.open(newline="") as fh:
        if fmt == "mooncake":
            for lineno, line in enumerate(fh, 1):
                if limit is not None and n >= limit:
                    return
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    r = TraceRecord(
                        float(rec["timestamp"]) / 1000.0,
                        int(rec["input_length"]),
                        int(rec.get("output_length", 0)),
                        tuple(int(h) for h in rec.get("hash_ids", [])),
                    )
                except (ValueError, KeyError, TypeError) as exc:
                    raise MfsError(f"{path}:{lineno}: not a Mooncake trace line ({exc})") from None
                n += 1
                yield r
            return
        t_col, in_col, out_col = CSV_COLUMNS[fmt]
        for lineno, row in enumerate(csv.DictReader(fh), 2):
            if limit is not None and n >= limit:
                return
            try:
                t = float(row[t_col]) if fmt == "splitwise" else _azure_time(row[t_col])
                r = TraceRecord(t, int(float(row[in_col])), int(float(row[out_col])), None)
            except (ValueError, KeyError, TypeError) as exc:
                raise MfsError(f"{path}:{lineno}: bad {fmt} trace row ({exc}): {FORMAT_HELP}") from None
            n += 1
            yield r


def count_records(path: Path | str) -> int:
    """Requests in the trace (lines, less a CSV header; blank lines not counted)."""
    path = Path(path)
    fmt = trace_format(path)
    try:
        with open(path, "rb") as f:
            lines = sum(1 for ln in f if ln.strip())
    except OSError as exc:
        raise MfsError(f"cannot read the trace {path}: {exc}") from exc
    return lines - (0 if fmt == "mooncake" else 1)


@dataclass(slots=True)
class ConversationReuse:
    """Reused prefix tokens of hash-less requests (the module doc's conversation model)."""

    block_tokens: int
    continue_fraction: float = 0.5
    window: int = 64
    rng: random.Random = field(default_factory=lambda: random.Random(REUSE_SEED))
    _history: list[tuple[int, int]] = field(default_factory=list)  # (conversation id, tokens)
    _next_id: int = 1

    def next(self, input_tokens: int, output_tokens: int) -> tuple[int, int]:
        """(reused tokens, conversation id) of the next request, in trace order."""
        u = self.rng.random()
        reused, conv = 0, 0
        if u < self.continue_fraction:
            recent = self._history[-self.window :]
            fits = [i for i, (_, hist) in enumerate(recent) if hist < input_tokens]
            if fits:
                k = len(self._history) - len(recent) + self.rng.choice(fits)
                conv, hist = self._history.pop(k)
                reused = hist // self.block_tokens * self.block_tokens
        if not conv:
            conv = self._next_id
            self._next_id += 1
        self._history.append((conv, input_tokens + output_tokens))
        return reused, conv
