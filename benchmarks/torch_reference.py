"""The jscale architecture in PyTorch eager (CPU), for the training-throughput comparison.

Same shapes and maths as ``jscale.model`` (pre-norm RMSNorm, RoPE, GELU MLP, tied or untied
embeddings, fp32 softmax), AdamW + global-norm clipping; not a dependency of jscale
(``pip install torch`` to use it).
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from jscale import data


class RMSNorm(torch.nn.Module):
    def __init__(self, d):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.scale


def rope(x, base):  # x: [B, H, T, K]
    t, k = x.shape[-2], x.shape[-1]
    inv = base ** (-torch.arange(0, k // 2, dtype=torch.float32) * 2 / k)
    ang = torch.arange(t, dtype=torch.float32)[:, None] * inv
    sin, cos = ang.sin(), ang.cos()
    x1, x2 = x[..., : k // 2], x[..., k // 2 :]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


class Block(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        d = c.d_model
        self.c = c
        self.attn_norm, self.mlp_norm = RMSNorm(d), RMSNorm(d)
        self.qkv = torch.nn.Linear(d, 3 * d, bias=False)
        self.out = torch.nn.Linear(d, d, bias=False)
        self.up = torch.nn.Linear(d, c.d_ff, bias=False)
        self.down = torch.nn.Linear(c.d_ff, d, bias=False)

    def forward(self, x):
        b, t, d = x.shape
        h, k = self.c.n_heads, self.c.head_dim
        q, kk, v = self.qkv(self.attn_norm(x)).view(b, t, 3, h, k).permute(2, 0, 3, 1, 4)
        q, kk = rope(q, self.c.rope_base), rope(kk, self.c.rope_base)
        o = F.scaled_dot_product_attention(q, kk, v, is_causal=True)  # fp32, PyTorch's fused
        x = x + self.out(o.transpose(1, 2).reshape(b, t, d))
        return x + self.down(F.gelu(self.up(self.mlp_norm(x)), approximate="tanh"))


class TorchLM(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.embed = torch.nn.Embedding(c.vocab_size, c.d_model)
        self.blocks = torch.nn.ModuleList(Block(c) for _ in range(c.n_layers))
        self.norm = RMSNorm(c.d_model)
        self.head = (
            None if c.tie_embeddings else torch.nn.Linear(c.d_model, c.vocab_size, bias=False)
        )

    def forward(self, tokens):
        x = self.embed(tokens)
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        return x @ self.embed.weight.T if self.head is None else self.head(x)


def torch_train_times(cfg, tc, corpus, calls: int) -> np.ndarray:
    """Seconds per ``tc.steps_per_call`` optimizer steps, for ``calls`` timed groups after one
    warm-up group; torch uses all host threads (its default)."""
    torch.manual_seed(0)
    m = TorchLM(cfg)
    opt = torch.optim.AdamW(
        m.parameters(), lr=tc.lr, betas=(tc.b1, tc.b2), weight_decay=tc.weight_decay
    )

    def step(s):
        b = torch.from_numpy(data.train_batch(corpus.train, 0, s, tc.batch_size, tc.seq_len)).long()
        loss = F.cross_entropy(m(b[:, :-1]).reshape(-1, cfg.vocab_size), b[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), tc.grad_clip)
        opt.step()

    out = []
    for c in range(calls + 1):
        t0 = time.perf_counter()
        for s in range(tc.steps_per_call):
            step(c * tc.steps_per_call + s)
        out.append(time.perf_counter() - t0)
    return np.array(out[1:])
