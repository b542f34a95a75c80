"""Tiny transformers for the text task.

:class:`TextTransformer` is a small BERT-like encoder (token + position embeddings, pre-LN
self-attention blocks, a classifier on the ``[CLS]`` state). ``depth`` = layers, ``width`` = hidden
size, heads = gcd(width, 4). ``forward_features(x)`` returns logits, every hidden state (embeddings
first, as Hugging Face does) and every layer's attention probabilities and raw scores, which is what
the DistilBERT / TinyBERT methods distil. Hugging Face models join through :mod:`kdengine.models.hf`.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from kdengine.core.config import ModelConfig
from kdengine.data.text import MAX_LEN, PAD, VOCAB_SIZE
from kdengine.models.families import builder


class Features(NamedTuple):
    logits: Tensor                  # [B, n_labels]
    hidden: list[Tensor]            # depth + 1 tensors [B, L, width]: embeddings, then each layer
    attentions: list[Tensor]        # depth tensors [B, heads, L, L] (softmax probabilities)
    mask: Tensor                    # [B, L] bool, True on real tokens
    # depth tensors [B, heads, L, L]: the pre-softmax scores q.k/sqrt(d) (TinyBERT distils these),
    # unmasked; None for models that do not expose them (Hugging Face returns probabilities only)
    scores: list[Tensor] | None = None


class SelfAttention(nn.Module):
    """Multi-head self-attention that also returns its probabilities and raw scores
    (nn.MultiheadAttention returns probabilities only, behind flags that disable the fused path)."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dk = heads, width // heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, h: Tensor, key_pad: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(output, attention probabilities, raw scores before the padding mask and softmax)."""
        b, n, w = h.shape
        q, k, v = self.qkv(h).view(b, n, 3, self.heads, self.dk).permute(2, 0, 3, 1, 4)
        raw = q @ k.transpose(-1, -2) / math.sqrt(self.dk)
        attn = raw.masked_fill(key_pad[:, None, None, :], torch.finfo(raw.dtype).min).softmax(-1)
        ctx = (self.drop(attn) @ v).transpose(1, 2).reshape(b, n, w)
        return self.out(ctx), attn, raw


class Block(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads, dropout)
        self.ff = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.drop = nn.Dropout(dropout)

    def forward(self, h: Tensor, key_pad: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        a, attn, raw = self.attn(self.ln1(h), key_pad)
        h = h + self.drop(a)
        h = h + self.drop(self.ff(self.ln2(h)))
        return h, attn, raw


class TextTransformer(nn.Module):
    """A BERT-like encoder small enough for a CPU: classify from the ``[CLS]`` state."""

    def __init__(self, n_labels: int, depth: int, width: int, dropout: float = 0.0,
                 vocab_size: int = VOCAB_SIZE, max_len: int = MAX_LEN):
        super().__init__()
        self.width, self.depth, self.heads = width, depth, math.gcd(width, 4)
        self.tok = nn.Embedding(vocab_size, width, padding_idx=PAD)
        self.pos = nn.Embedding(max_len, width)
        self.emb_ln = nn.LayerNorm(width)
        self.blocks = nn.ModuleList(Block(width, self.heads, dropout) for _ in range(depth))
        self.ln = nn.LayerNorm(width)
        self.head = nn.Linear(width, n_labels)

    def forward_features(self, x: Tensor) -> Features:
        x = trim(x.long())
        mask = x != PAD
        pos = torch.arange(x.shape[1], device=x.device)
        h = self.emb_ln(self.tok(x) + self.pos(pos)[None])
        hidden, attns, scores = [h], [], []
        for blk in self.blocks:
            h, a, raw = blk(h, ~mask)
            hidden.append(h)
            attns.append(a)
            scores.append(raw)
        logits = self.head(self.ln(h[:, 0]))
        return Features(logits, hidden, attns, mask, scores)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x).logits


@builder("transformer")
def _transformer(cfg: ModelConfig, input_shape: tuple, n_classes: int) -> nn.Module:
    return TextTransformer(n_classes, cfg.depth, cfg.width, cfg.dropout, max_len=input_shape[0])


def features(model: nn.Module, x: Tensor) -> Features:
    """``model.forward_features(x)``, with a clear error for models that cannot give features."""
    ff = getattr(model, "forward_features", None)
    if ff is None:
        raise TypeError(f"{type(model).__name__} has no forward_features(); the transformer "
                        f"distillation methods need the transformer family (data: text)")
    return ff(x)


def layer_map(n_student: int, n_teacher: int) -> list[int]:
    """TinyBERT's uniform mapping g(m) = m * N / M: student layer m (1..M) learns from teacher layer
    g(m); the last student layer always maps to the last teacher layer."""
    return [max(1, (m * n_teacher) // n_student) for m in range(1, n_student + 1)]


def copy_alternate_layers(student: nn.Module, teacher: nn.Module) -> bool:
    """DistilBERT's initialisation: the student takes the teacher's embeddings and an evenly spread
    subset of its layers (one in two for 12 -> 6). Returns False when shapes do not allow it."""
    if not (isinstance(student, TextTransformer) and isinstance(teacher, TextTransformer)):
        return False
    if student.width != teacher.width or student.depth > teacher.depth:
        return False
    idx = np.linspace(0, teacher.depth - 1, student.depth).round().astype(int) if student.depth > 1 \
        else [0]
    with torch.no_grad():
        for name in ("tok", "pos", "emb_ln", "ln", "head"):
            getattr(student, name).load_state_dict(getattr(teacher, name).state_dict())
        for i, j in enumerate(idx):
            student.blocks[i].load_state_dict(teacher.blocks[int(j)].state_dict())
    return True


def trim(x: Tensor) -> Tensor:
    """Drop the padding columns every sequence of the batch has (about a third of the compute).
    Padding is masked, so logits do not change; teacher and student see the same trimmed length."""
    n = int((x != PAD).sum(1).max()) if x.numel() else x.shape[1]
    return x[:, :max(1, n)]


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` [B, L, ...] over positions where ``mask`` [B, L] is True (all trailing dims)."""
    m = mask.to(x.dtype).view(*mask.shape, *([1] * (x.dim() - mask.dim())))
    per = x[0, 0].numel() if x.dim() > 2 else 1
    return (x * m).sum() / (m.sum() * per).clamp_min(1)


__all__ = ["Features", "TextTransformer", "copy_alternate_layers", "features", "layer_map",
           "masked_mean", "trim"]
