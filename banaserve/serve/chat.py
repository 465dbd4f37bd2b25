"""Chat messages -> prompt text, with the checkpoint's chat template.

Templates come from tokenizer_config.json, i.e. from whoever published the checkpoint, so they
run in jinja2's immutable sandbox (no attribute access to Python internals, no mutation).
Without a template we fall back to ChatML, which is what our generated checkpoints use.
"""

from __future__ import annotations

from datetime import datetime

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from banaserve.serve.errors import APIError

DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _raise_exception(message: str) -> None:
    # HF templates call raise_exception("...") to refuse a conversation (e.g. roles out of order)
    raise TemplateError(message)


class ChatRenderer:
    """Renders a list of {"role", "content"} dicts with one compiled template."""

    def __init__(self, template: str | None, special_tokens: dict[str, str] | None = None):
        # the same environment settings as transformers' apply_chat_template, so prompts match HF
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=["jinja2.ext.loopcontrols"])
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        self.template = env.from_string(template or DEFAULT_CHAT_TEMPLATE)
        self.special_tokens = special_tokens or {}

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The prompt text; a template that refuses the conversation is the client's error (400)."""
        try:
            return self.template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                        **self.special_tokens)
        except (TemplateError, TypeError, ValueError) as exc:
            raise APIError(400, f"The chat template rejected the messages: {exc}", "messages") from None


def special_tokens_of(tokenizer_config: dict) -> dict[str, str]:
    """bos_token / eos_token strings that HF templates reference by name."""
    out = {}
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
        value = tokenizer_config.get(name)
        if isinstance(value, dict):  # AddedToken form: {"content": "<s>", ...}
            value = value.get("content")
        out[name] = value if isinstance(value, str) else ""
    return out
