"""Parse a recorded OpenAI completions event stream after the fact.

The load generator only timestamps raw network reads while streaming (so parsing never delays a
measurement); this module turns those reads into token arrival times, usage and errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

DONE = b"[DONE]"


@dataclass(slots=True)
class ParsedStream:
    """What a stream said: arrival time of each chunk carrying text, usage, [DONE], an error."""

    token_times: list[float] = field(default_factory=list)
    completion_tokens: int | None = None  # from usage
    prompt_tokens: int | None = None  # from usage
    done: bool = False
    error: str | None = None
    done_time: float | None = None


def _has_text(event: dict) -> bool:
    choices = event.get("choices")
    if not isinstance(choices, list):
        return False
    return any(isinstance(c, dict) and c.get("text") for c in choices)


def _handle(event: dict, t: float, out: ParsedStream) -> None:
    if "error" in event:
        err = event["error"]
        message = err.get("message", err) if isinstance(err, dict) else err
        out.error = f"server error in stream: {str(message)[:200]}"
        return
    if _has_text(event):
        out.token_times.append(t)
    usage = event.get("usage")
    if isinstance(usage, dict):
        if isinstance(usage.get("completion_tokens"), int):
            out.completion_tokens = usage["completion_tokens"]
        if isinstance(usage.get("prompt_tokens"), int):
            out.prompt_tokens = usage["prompt_tokens"]


def _line(raw: bytes, t: float, out: ParsedStream) -> None:
    line = raw.strip()
    if not line.startswith(b"data:"):
        return  # blank separators, comments, event:/id: fields
    payload = line[5:].strip()
    if payload == DONE:
        out.done, out.done_time = True, t
        return
    try:
        event = msgspec.json.decode(payload)
    except msgspec.DecodeError:
        out.error = f"bad stream event: {payload[:80]!r}"
        return
    if isinstance(event, dict):
        _handle(event, t, out)


def parse_stream(reads: list[tuple[float, bytes]]) -> ParsedStream:
    """Parse (arrival time, bytes) network reads. A line belongs to the read that completed it."""
    out = ParsedStream()
    pending = b""
    t = 0.0
    for t, data in reads:
        pending += data
        if b"\n" not in data:
            continue
        *lines, pending = pending.split(b"\n")
        for raw in lines:
            _line(raw, t, out)
            if out.error:
                return out
    if pending.strip():  # a last line without its newline
        _line(pending, t, out)
    return out
