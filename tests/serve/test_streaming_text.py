"""Text is made once, by the front end: the streamed chunks are the same bytes whether one engine,
colocated instances or a PD pair produced the tokens, stop strings that end mid-token included."""

import httpx
import pytest

from banaserve import LLM, SamplingParams
from tests.serve.server_proc import NUM_KV_BLOCKS, start_server

MODES = {
    "single": (),
    "colocated-2": ("--mode", "colocated", "--instances", "2"),
    "disagg-1p1d": ("--mode", "disagg", "--prefill", "1", "--decode", "1"),
}
PROMPTS = ["The quick brown fox", "Once upon a time there", "In the beginning", "Serving systems are",
           "A B C D E F", "Hello hello hello"]
MAX_TOKENS = 16


def pieces(llm: LLM, token_ids: list[int]) -> list[str]:
    """The text each token adds, as the incremental detokenizer emits it."""
    out, prev = [], ""
    for i in range(1, len(token_ids) + 1):
        text = llm.tokenizer.decode(token_ids[:i])
        out.append(text[len(prev):] if text.startswith(prev) else "")
        prev = text if text.startswith(prev) else prev
    return out


def mid_token_stop(llm: LLM, token_ids: list[int], text: str) -> str | None:
    """A 2-character stop string that starts in one token's text and ends inside the next one's."""
    pos = 0
    for piece in pieces(llm, token_ids):
        if pos >= 1 and len(piece) >= 2 and text.startswith(piece, pos):
            return text[pos - 1:pos + 1]
        pos += len(piece)
    return None


@pytest.fixture(scope="module")
def cases(tiny_llama):
    llm = LLM(tiny_llama, num_kv_blocks=NUM_KV_BLOCKS)
    refs = llm.generate(PROMPTS, SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True))
    stops = [mid_token_stop(llm, r.token_ids, r.text) for r in refs]
    assert sum(s is not None for s in stops) >= 3, "the workload needs stop strings that end mid-token"
    return refs, stops


def stream(base_url: str, prompt: str, stop: str | None) -> tuple[list[str], str | None]:
    body = {"model": "tiny-llama", "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0.0,
            "ignore_eos": True, "stream": True}
    if stop is not None:
        body["stop"] = [stop]
    chunks, reason = [], None
    with httpx.stream("POST", base_url + "/v1/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {"):
                choice = httpx.Response(200, content=line[6:]).json()["choices"][0]
                chunks.append(choice["text"])
                reason = choice["finish_reason"] or reason
    return chunks, reason


@pytest.fixture(scope="module")
def streams(tiny_llama, tmp_path_factory, cases):
    refs, stops = cases
    out = {}
    for mode, flags in MODES.items():
        server = start_server(tiny_llama, str(tmp_path_factory.mktemp(mode)), *flags)
        try:
            out[mode] = [[stream(server.base_url, p, s) for p in PROMPTS] for s in (None, *stops)]
        finally:
            server.stop()
    return out


def test_streamed_chunks_are_the_same_bytes_in_every_mode(streams, cases):
    refs, _ = cases
    single = streams["single"]
    for mode in MODES:
        assert streams[mode] == single, mode
    plain = single[0]
    assert ["".join(chunks) for chunks, _ in plain] == [r.text for r in refs]
    assert all(reason == "length" for _, reason in plain)


def test_stop_strings_ending_mid_token_cut_the_text_in_every_mode(streams, cases):
    refs, stops = cases
    for mode in MODES:
        for k, stop in enumerate(stops, start=1):
            if stop is None:
                continue
            for i, ref in enumerate(refs):
                chunks, reason = streams[mode][k][i]
                cut = ref.text.find(stop)
                if cut < 0:
                    assert "".join(chunks) == ref.text and reason == "length", (mode, i)
                else:
                    assert "".join(chunks) == ref.text[:cut] and reason == "stop", (mode, i)
