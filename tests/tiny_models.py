"""Tiny models and data shared by several test files.

A plain module, not a package: pytest puts tests/ on sys.path (there is no tests/__init__.py),
so a test file imports it as `from tiny_models import MLP`.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class MLP(nn.Module):
    """Linear layers fc1, fc2, ... of the given widths, `act` between two of them (not after
    the last). MLP() is the 16 -> 32 -> 8 ReLU model: fc2(relu(fc1(x)))."""

    def __init__(self, *widths: int, act=torch.relu):
        super().__init__()
        widths = widths or (16, 32, 8)
        self.depth = len(widths) - 1
        for i in range(self.depth):
            setattr(self, f"fc{i + 1}", nn.Linear(widths[i], widths[i + 1]))
        self.act = act

    def forward(self, x):
        x = self.fc1(x)
        for i in range(2, self.depth + 1):
            x = getattr(self, f"fc{i}")(self.act(x))
        return x


class ConvMLP(nn.Module):
    """conv 3->8 + ReLU, global average pool, fc1 8->24 + ReLU, fc2 24->4, then `head`
    (a function such as torch.sigmoid) when one is given."""

    def __init__(self, head=None):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc1 = nn.Linear(8, 24)
        self.fc2 = nn.Linear(24, 4)
        self.head = head

    def forward(self, x):
        y = torch.relu(self.conv(x)).mean(dim=(2, 3))
        y = self.fc2(torch.relu(self.fc1(y)))
        return y if self.head is None else self.head(y)


def image_batches(seed=0, count=4):
    """`count` seeded [2, 3, 8, 8] batches: ConvMLP's calibration data."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, 8, 8, generator=g) for _ in range(count)]


class ConvFcOuter(nn.Module):
    """conv + ReLU, flatten, linear, then an outer-product matmul: one of each lowp/fp8 kind
    (input [N, 3, 8, 8])."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 16)

    def forward(self, x):
        y = self.fc(torch.relu(self.conv(x)).flatten(1))
        return torch.matmul(y.unsqueeze(-1), y.unsqueeze(-2))


class EncoderBlock(nn.Module):
    """A post-LN transformer encoder block with an additive attention mask."""

    def __init__(self, dim=32, heads=4, scale_factor=None, gelu="none"):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj, self.ln1 = nn.Linear(dim, dim), nn.LayerNorm(dim)
        self.fc1, self.fc2, self.ln2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim), \
            nn.LayerNorm(dim)
        self.factor = scale_factor or 1 / math.sqrt(dim // heads)
        self.gelu = gelu

    def forward(self, x, mask):
        b, t, d = x.shape
        q, k, v = (f(x).view(b, t, self.heads, -1).transpose(1, 2)
                   for f in (self.q, self.k, self.v))
        bias = torch.where(mask[:, None, None, :], torch.zeros(()), -3.4e38)
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.factor + bias
        ctx = torch.matmul(torch.softmax(scores, -1), v).transpose(1, 2).reshape(b, t, d)
        h = self.ln1(self.proj(ctx) + x)
        return self.ln2(self.fc2(F.gelu(self.fc1(h), approximate=self.gelu)) + h)


def encoder_inputs(seed=0, batch=2, tokens=6, dim=32):
    """(x, mask) for EncoderBlock: the last two tokens of the first row masked."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, tokens, dtype=torch.bool)
    mask[0, -2:] = False
    return torch.randn(batch, tokens, dim, generator=g), mask


def encoder_calibration(count=4):
    """`count` calibration batches for EncoderBlock."""
    return [encoder_inputs(seed) for seed in range(1, count + 1)]
