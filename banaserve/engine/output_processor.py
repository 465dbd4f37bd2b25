"""The front end's half of the engine: token outputs in, text out (after vLLM v1's output processor).

The engine core works in token ids; this turns a request's token stream into text deltas that
never split a character, and applies stop strings, which only text can see. When a stop string
ends a request that the core still runs, `process` says so and the caller aborts it there. The
stream is one per client request, whichever instances produced its tokens (re-dispatches, PD
hand-offs), so the text is the same as one engine's.
"""

from __future__ import annotations

from dataclasses import dataclass

from banaserve.engine.outputs import RequestOutput, TokenOutput
from banaserve.engine.sampling_params import SamplingParams
from banaserve.engine.tokenizer import IncrementalDetokenizer, TextTokenizer


@dataclass(slots=True)
class TextStream:
    prompt_token_ids: list[int]
    params: SamplingParams
    detok: IncrementalDetokenizer
    token_ids: list[int]
    sent: int = 0  # characters of text already given to the caller (new_text so far)
    num_cached_tokens: int | None = None


class OutputProcessor:
    def __init__(self, tokenizer: TextTokenizer):
        self.tokenizer = tokenizer
        self.streams: dict[str, TextStream] = {}

    def add(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams) -> None:
        self.streams[request_id] = TextStream(list(prompt_token_ids), params,
                                              IncrementalDetokenizer(self.tokenizer), [])

    def forget(self, request_id: str) -> None:
        self.streams.pop(request_id, None)

    def process(self, out: TokenOutput) -> tuple[RequestOutput | None, bool]:
        """The caller's output for `out`, and True when a stop string ended a request the engine
        core has not finished (abort it there). None for a request this processor does not know."""
        s = self.streams.get(out.request_id)
        if s is None:
            return None, False
        if s.num_cached_tokens is None:
            s.num_cached_tokens = out.num_cached_tokens
        reason = out.finish_reason if out.finish_reason == "stop" else None
        for token in out.new_token_ids:  # one at a time, as stop strings are checked per token
            s.token_ids.append(token)
            s.detok.add([token])
            if reason is None and s.params.stop and self._truncate_at_stop(s):
                reason = "stop"
                break
        cut_by_stop_string = reason == "stop" and out.finish_reason != "stop"
        reason = reason or out.finish_reason
        finished = out.finished or cut_by_stop_string
        text = s.detok.text
        if finished:
            del self.streams[out.request_id]
            if reason != "stop" or not s.params.stop:
                full = self.tokenizer.decode(s.token_ids)  # flush characters still incomplete
                text = full if full.startswith(text) else text
        # while running, hold back what could still be the start of a stop string: a client must
        # never see a piece of one (as vLLM's detokenizer does)
        end = len(text) if finished or not s.params.stop else len(text) - max(map(len, s.params.stop)) + 1
        new_text = text[s.sent:end]
        s.sent = max(s.sent, end)
        return RequestOutput(out.request_id, s.prompt_token_ids, list(s.token_ids), text,
                             list(out.new_token_ids), new_text, finished, reason if finished else None,
                             s.num_cached_tokens or 0, out.num_preemptions), cut_by_stop_string

    def abort(self, request_id: str) -> RequestOutput | None:
        """The final output of a request aborted by its caller (finish_reason "abort")."""
        return self.process(TokenOutput(request_id, [], True, "abort"))[0]

    @staticmethod
    def _truncate_at_stop(s: TextStream) -> bool:
        longest = max(len(x) for x in s.params.stop)
        start = max(0, s.sent - longest)
        hits = [i for i in (s.detok.text.find(x, start) for x in s.params.stop) if i >= 0]
        if not hits:
            return False
        s.detok.text = s.detok.text[:min(hits)]
        return True
