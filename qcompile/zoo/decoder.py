"""A small byte-level decoder-only transformer LM with an explicit KV cache.

`forward(tokens, k_cache, v_cache, pos)` takes the cache as tensors [L, B, H, S, Dh] and
returns `(logits, new_k_cache, new_v_cache)`: the keys and values of `tokens` are written at
positions `pos` (an int64 tensor [T]) with `index_copy`, a functional update torch.export
captures, and attention reads the whole written cache under a causal mask built from `pos`.
`prefill(tokens)` is the same network without a cache (training, perplexity).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .digits import _settings_key, cache_dir


@dataclass(frozen=True)
class DecoderConfig:
    """Shape of a DecoderLM; byte vocabulary, `context` positions."""
    vocab: int = 256
    d_model: int = 128
    n_layers: int = 3
    n_heads: int = 4
    context: int = 128
    mlp_ratio: int = 4
    tied: bool = True

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


class DecoderBlock(nn.Module):
    """Pre-LayerNorm block: causal self-attention over the cache, then a GELU MLP."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.fc1 = nn.Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(cfg.mlp_ratio * cfg.d_model, cfg.d_model)

    def _split(self, x: torch.Tensor):
        b, t, _ = x.shape
        q, k, v = self.qkv(self.ln1(x)).chunk(3, dim=-1)
        return [y.reshape(b, t, self.heads, self.head_dim).transpose(1, 2) for y in (q, k, v)]

    def _merge(self, y: torch.Tensor) -> torch.Tensor:
        b, _, t, _ = y.shape
        return y.transpose(1, 2).reshape(b, t, self.heads * self.head_dim)

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.act(self.fc1(self.ln2(x))))

    def forward(self, x, k_cache, v_cache, pos, allowed):
        """x [B,T,D]; caches [B,H,S,Dh]; allowed [T,S] bool. Returns x, new k, new v."""
        q, k, v = self._split(x)
        k_all = k_cache.index_copy(2, pos, k)
        v_all = v_cache.index_copy(2, pos, v)
        scores = torch.matmul(q, k_all.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))
        scores = scores.masked_fill(~allowed, float("-inf"))
        y = torch.matmul(torch.softmax(scores, dim=-1), v_all)
        x = x + self.proj(self._merge(y))
        return self._mlp(x), k_all, v_all

    def prefill(self, x: torch.Tensor) -> torch.Tensor:
        """Causal self-attention over x alone (no cache)."""
        q, k, v = self._split(x)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self._mlp(x + self.proj(self._merge(y)))


def _init_weights(module: nn.Module) -> None:
    """GPT-2 style: normal(0, 0.02) weights, zero biases."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


class DecoderLM(nn.Module):
    """Token + position embeddings, `n_layers` DecoderBlocks, final LayerNorm, LM head."""

    def __init__(self, cfg: DecoderConfig = DecoderConfig()):
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab, cfg.d_model)
        self.pos = nn.Embedding(cfg.context, cfg.d_model)
        self.blocks = nn.ModuleList(DecoderBlock(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab, bias=False)
        if cfg.tied:
            self.head.weight = self.tok.weight
        self.apply(_init_weights)

    def empty_cache(self, batch: int, length: int | None = None):
        """Zero key and value caches [L, B, H, S, Dh] (S = context unless given)."""
        cfg = self.cfg
        shape = (cfg.n_layers, batch, cfg.n_heads, length or cfg.context, cfg.head_dim)
        return torch.zeros(shape), torch.zeros(shape)

    def forward(self, tokens, k_cache, v_cache, pos):
        """tokens [B,T] int64 at positions pos [T]; returns logits [B,T,V], new caches."""
        x = self.tok(tokens) + self.pos(pos)
        slots = torch.arange(k_cache.shape[3], device=tokens.device)
        allowed = slots.unsqueeze(0) <= pos.unsqueeze(1)
        keys, values = [], []
        for layer, block in enumerate(self.blocks):
            x, k_all, v_all = block(x, k_cache[layer], v_cache[layer], pos, allowed)
            keys.append(k_all)
            values.append(v_all)
        logits = self.head(self.ln_f(x))
        return logits, torch.stack(keys), torch.stack(values)

    def prefill(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits [B,T,V] of a whole sequence from position 0, without a cache."""
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.tok(tokens) + self.pos(positions)
        for block in self.blocks:
            x = block.prefill(x)
        return self.head(self.ln_f(x))


class PrefillWithCache(nn.Module):
    """tokens [B,T] -> logits, through the cache path from an empty cache at positions 0..T-1.

    The graph holds the cache writes and reads of every layer, so a quantized KV cache
    shows in the perplexity of a prefill.
    """

    def __init__(self, model: DecoderLM):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        cfg = self.model.cfg
        shape = (cfg.n_layers, tokens.shape[0], cfg.n_heads, tokens.shape[1], cfg.head_dim)
        k_cache = torch.zeros(shape, dtype=torch.float32, device=tokens.device)
        pos = torch.arange(tokens.shape[1], device=tokens.device)
        return self.model(tokens, k_cache, torch.zeros_like(k_cache), pos)[0]


def weights_path(cfg: DecoderConfig, settings: dict) -> Path:
    """Where the trained weights of `cfg` trained with `settings` are cached."""
    return cache_dir() / f"decoder_lm_{_settings_key({**asdict(cfg), **settings})}.pt"


def load_decoder(train_if_missing: bool = True) -> DecoderLM:
    """The byte-level LM trained on the stdlib's Python source (trained on first use)."""
    from .decoder_data import TRAIN_SETTINGS
    cfg = DecoderConfig()
    path = weights_path(cfg, TRAIN_SETTINGS)
    if not path.exists():
        if not train_if_missing:
            raise FileNotFoundError(f"no trained decoder weights at {path}")
        from .decoder_data import train_and_save
        train_and_save(cfg, path)
    model = DecoderLM(cfg)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()
