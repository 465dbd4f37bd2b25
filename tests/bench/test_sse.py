"""Parsing recorded event streams: chunk times, usage, [DONE], errors, lines split across reads."""

from __future__ import annotations

import json

from banaserve.bench.sse import parse_stream


def event(obj) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def token(text: str) -> bytes:
    return event({"choices": [{"index": 0, "text": text, "finish_reason": None}]})


def test_tokens_usage_and_done():
    reads = [
        (1.0, token(" a")),
        (1.5, token(" b") + token(" c")),  # two events in one read share its arrival time
        (2.0, event({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 4}})),
        (2.1, b"data: [DONE]\n\n"),
    ]
    p = parse_stream(reads)
    assert p.token_times == [1.0, 1.5, 1.5]
    assert (p.completion_tokens, p.prompt_tokens) == (4, 7)
    assert p.done and p.done_time == 2.1
    assert p.error is None


def test_line_split_across_reads_belongs_to_the_read_that_completes_it():
    data = token(" x")
    reads = [(1.0, data[:10]), (1.2, data[10:]), (1.4, b"data: [DO"), (1.6, b"NE]\n\n")]
    p = parse_stream(reads)
    assert p.token_times == [1.2]
    assert p.done_time == 1.6


def test_empty_text_chunks_and_comments_are_not_tokens():
    reads = [
        (0.5, b": keep-alive\n\n"),
        (1.0, event({"choices": [{"index": 0, "text": ""}]})),
        (1.1, b"event: message\r\n" + token(" y").replace(b"\n", b"\r\n")),
        (1.2, b"data: [DONE]"),  # no trailing newline
    ]
    p = parse_stream(reads)
    assert p.token_times == [1.1]
    assert p.completion_tokens is None
    assert p.done


def test_error_event_and_garbage():
    p = parse_stream([(1.0, token(" a")), (2.0, event({"error": {"message": "out of memory"}}))])
    assert p.error == "server error in stream: out of memory"
    p = parse_stream([(1.0, b"data: {not json\n\n")])
    assert p.error is not None and p.error.startswith("bad stream event")


def test_stream_without_done():
    p = parse_stream([(1.0, token(" a"))])
    assert p.token_times == [1.0]
    assert not p.done
