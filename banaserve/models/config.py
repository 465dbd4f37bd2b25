"""Model architecture read from a Hugging Face `config.json`."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

# model_type -> (attention bias on q/k/v, per-head q/k RMSNorm)
SUPPORTED_ARCHS: dict[str, tuple[bool, bool]] = {
    "llama": (False, False),
    "mistral": (False, False),
    "qwen2": (True, False),
    "qwen3": (False, True),
}


@dataclass(slots=True)
class ModelConfig:
    """The shape of a decoder-only transformer: everything the engine needs to build and page it."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    qk_norm: bool = False
    bos_token_id: int | None = None
    eos_token_ids: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        # a zero or negative size would surface later as a division by zero or an empty tensor
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "num_kv_heads", "head_dim", "max_position_embeddings"):
            if getattr(self, name) <= 0:
                raise ValueError(f"model config: {name} must be positive, got {getattr(self, name)}")

    @classmethod
    def from_dict(cls, cfg: dict) -> ModelConfig:
        """Parse a Hugging Face config.json dict; a missing or malformed key raises ValueError."""
        if not isinstance(cfg, dict):
            raise ValueError(f"model config must be a JSON object, got {type(cfg).__name__}")
        try:
            return cls._from_dict(cfg)
        except KeyError as e:
            raise ValueError(f"model config lacks {e.args[0]!r}") from None
        except (TypeError, ZeroDivisionError) as e:
            raise ValueError(f"bad model config: {e}") from None

    @classmethod
    def _from_dict(cls, cfg: dict) -> ModelConfig:
        model_type = cfg.get("model_type", "")
        if model_type not in SUPPORTED_ARCHS:
            raise ValueError(
                f"unsupported model_type {model_type!r}; supported: {', '.join(SUPPORTED_ARCHS)}"
            )
        bias, qk_norm = SUPPORTED_ARCHS[model_type]
        bias = bool(cfg.get("attention_bias", bias))
        window = cfg.get("sliding_window")
        if model_type == "mistral" and window and window < cfg.get("max_position_embeddings", 0):
            raise ValueError("mistral sliding-window attention is not supported (sliding_window must be null)")
        num_heads = int(cfg["num_attention_heads"])
        hidden = int(cfg["hidden_size"])
        eos = cfg.get("eos_token_id")
        # transformers >= 5 keeps theta and scaling together under rope_parameters
        rope = dict(cfg.get("rope_parameters") or {})
        theta = float(rope.pop("rope_theta", cfg.get("rope_theta", 10000.0)))
        scaling = rope if rope.get("rope_type", "default") != "default" else cfg.get("rope_scaling")
        return cls(
            model_type=model_type,
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(cfg["intermediate_size"]),
            num_layers=int(cfg["num_hidden_layers"]),
            num_heads=num_heads,
            num_kv_heads=int(cfg.get("num_key_value_heads") or num_heads),
            head_dim=int(cfg.get("head_dim") or hidden // num_heads),
            max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_scaling=scaling,
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=bias,
            qk_norm=qk_norm,
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_ids=[] if eos is None else ([eos] if isinstance(eos, int) else list(eos)),
        )

    @classmethod
    def from_pretrained(cls, path: str) -> ModelConfig:
        file = os.path.join(path, "config.json")
        if not os.path.isfile(file):
            raise ValueError(f"no model at {path!r}: {file} not found")
        with open(file) as f:
            cfg = cls.from_dict(json.load(f))
        gen_file = os.path.join(path, "generation_config.json")
        if os.path.isfile(gen_file):
            with open(gen_file) as f:
                eos = json.load(f).get("eos_token_id")
            if eos is not None:
                cfg.eos_token_ids = [eos] if isinstance(eos, int) else list(eos)
        return cfg

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """Bytes of K and V one token occupies across all layers."""
        return 2 * self.num_layers * self.kv_dim * dtype_bytes

    # Parameter counts (the simulator's cost model and weight sizes use them).

    def attn_params(self) -> int:
        """q, k, v and o projections of one layer, plus the q/k/v biases where the model has them."""
        qkv = self.q_dim + 2 * self.kv_dim
        return self.hidden_size * qkv + self.q_dim * self.hidden_size + (qkv if self.attention_bias else 0)

    def mlp_params(self) -> int:
        return 3 * self.hidden_size * self.intermediate_size  # gate, up, down

    def layer_params(self) -> int:
        norms = 2 * self.hidden_size + (2 * self.head_dim if self.qk_norm else 0)
        return self.attn_params() + self.mlp_params() + norms

    def embedding_params(self) -> int:
        """Input embedding and LM head (one matrix when tied)."""
        return self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)

    def num_params(self) -> int:
        return self.num_layers * self.layer_params() + self.embedding_params() + self.hidden_size  # + final norm
