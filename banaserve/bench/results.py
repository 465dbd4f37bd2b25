"""Per-request records and the result JSON file (shared with the simulator)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from banaserve.bench.spec import BenchError

SCHEMA = "banaserve-bench/1"
OK = "ok"
FAILED = "failed"


@dataclass(slots=True)
class RequestRecord:
    """What happened to one request. Times are seconds from the start of the run.

    `token_times_s` holds the arrival time of every streamed chunk that carried text;
    `output_tokens` is the server's usage count when it sent one, else the number of such chunks.
    """

    index: int
    arrival_s: float  # scheduled
    input_len: int  # requested prompt length
    output_len: int  # requested max_tokens
    send_s: float | None = None  # when the request was actually sent
    first_token_s: float | None = None
    end_s: float | None = None  # stream finished or failed
    token_times_s: list[float] = field(default_factory=list)
    output_tokens: int = 0
    prompt_tokens: int | None = None  # from the server's usage, when sent
    status: str = OK
    error: str = ""  # failure reason, empty when ok

    @property
    def ok(self) -> bool:
        return self.status == OK


@dataclass(slots=True)
class Result:
    """A result file read back: run metadata, summary and per-request records."""

    meta: dict[str, Any]
    summary: dict[str, Any]
    records: list[RequestRecord]
    path: str = ""


def _round(t: float | None) -> float | None:
    return None if t is None else round(t, 6)


def record_to_dict(r: RequestRecord) -> dict[str, Any]:
    """A record as plain JSON-ready data, times rounded to microseconds to keep files small."""
    d = {f.name: getattr(r, f.name) for f in dataclasses.fields(r)}
    for key in ("arrival_s", "send_s", "first_token_s", "end_s"):
        d[key] = _round(d[key])
    d["token_times_s"] = [round(t, 6) for t in r.token_times_s]
    return d


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def write_result(path: str | Path, records: list[RequestRecord], summary: Any, meta: dict[str, Any]) -> None:
    """Write one run: {"schema", "meta", "summary", "requests"}. `summary` may be a dataclass or dict."""
    # Meta and summary pretty-printed for people; one request per line keeps big runs compact.
    head = msgspec.json.encode({"schema": SCHEMA, "meta": _plain(meta), "summary": _plain(summary)})
    head = msgspec.json.format(head, indent=1)
    rows = b",\n".join(msgspec.json.encode(record_to_dict(r)) for r in records)
    path = Path(path)
    if path.parent != Path(""):
        path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(head.rstrip()[:-1].rstrip() + b',\n "requests": [\n' + rows + b"\n ]\n}\n")


def read_result(path: str | Path) -> Result:
    """Read a result file written by `write_result`."""
    try:
        doc = msgspec.json.decode(Path(path).read_bytes())
    except FileNotFoundError:
        raise BenchError(f"result file not found: {path}") from None
    except msgspec.DecodeError as e:
        raise BenchError(f"{path}: not JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise BenchError(f"{path}: not a banaserve bench result (schema {SCHEMA})")
    try:
        records = msgspec.convert(doc["requests"], list[RequestRecord])
    except msgspec.ValidationError as e:
        raise BenchError(f"{path}: bad request records: {e}") from None
    return Result(meta=doc["meta"], summary=doc["summary"], records=records, path=str(path))
