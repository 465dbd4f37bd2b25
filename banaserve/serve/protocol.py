"""Request bodies of the OpenAI-compatible API, validated strictly.

Strict mode: "1" is not an int, true is not a number, NaN is not a float. Unknown fields are
rejected (as OpenAI does) except a few OpenAI parameters that are accepted at their neutral
value so that ordinary clients which always send them keep working.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from banaserve.serve.errors import APIError

# torch generators take seeds in [-2**63, 2**64); top_k is turned into an int64 tensor
SEED_MIN, SEED_MAX = -(1 << 63), (1 << 64) - 1
TOP_K_MAX = (1 << 31) - 1

TokenIds = list[Annotated[int, Field(ge=0)]]


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    include_usage: bool = False


class _Sampling(BaseModel):
    """Fields shared by completions and chat completions."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, data):
        # OpenAI treats `"temperature": null` as "not given"; some clients send every field that way
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data

    model: str
    max_tokens: int | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 1.0
    top_p: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
    top_k: Annotated[int, Field(ge=-1, le=TOP_K_MAX)] = 0  # extension (vLLM's name)
    seed: Annotated[int, Field(ge=SEED_MIN, le=SEED_MAX)] | None = None
    stop: str | Annotated[list[str], Field(max_length=16)] | None = None
    stop_token_ids: Annotated[TokenIds, Field(max_length=1024)] | None = None  # extension
    ignore_eos: bool = False  # extension
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    user: str | None = None  # accepted and ignored, as OpenAI's abuse-tracking id
    # OpenAI parameters accepted only at their neutral value
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None

    def check_common(self) -> None:
        """Reject what the engine does not do, with the parameter named."""
        if self.n != 1:
            raise APIError(400, f"n={self.n} is not supported: only n=1.", "n")
        if self.stream_options is not None and not self.stream:
            raise APIError(400, "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                           "stream_options")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) not in (None, 0.0):
                raise APIError(400, f"'{name}' is not supported (only 0).", name)
        if self.logit_bias:
            raise APIError(400, "'logit_bias' is not supported.", "logit_bias")

    @property
    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(_Sampling):
    """POST /v1/completions."""

    prompt: str | TokenIds | list[str] | list[TokenIds]
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None

    def check(self) -> None:
        self.check_common()
        if self.echo:
            raise APIError(400, "echo=true is not supported.", "echo")
        if self.logprobs is not None:
            raise APIError(400, "logprobs are not supported.", "logprobs")
        if self.best_of not in (None, 1):
            raise APIError(400, "best_of is not supported (only 1).", "best_of")
        if self.suffix:
            raise APIError(400, "suffix is not supported.", "suffix")

    def single_prompt(self) -> str | list[int]:
        """The one prompt of the request: a string or token ids (batches of prompts are refused)."""
        p = self.prompt
        if isinstance(p, str):
            return p
        if not p:
            raise APIError(400, "prompt is empty.", "prompt")
        if isinstance(p[0], int):
            return p
        if len(p) != 1:
            raise APIError(400, f"Only one prompt per request is supported, got {len(p)}.", "prompt")
        return p[0]


class TextPart(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")  # name, tool_call_id, ...: not used by templates
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(_Sampling):
    """POST /v1/chat/completions."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    add_generation_prompt: bool = True  # extension, as in vLLM

    def check(self) -> None:
        self.check_common()
        if self.logprobs:
            raise APIError(400, "logprobs are not supported.", "logprobs")
        if self.top_logprobs is not None:
            raise APIError(400, "top_logprobs is not supported.", "top_logprobs")
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            raise APIError(400, "Give max_tokens or max_completion_tokens, not both.",
                           "max_completion_tokens")

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
