"""Muon + QK-clip on CPU: a tiny GQA attention model whose max attention logits are held under tau.

Run: python examples/extensions/muon_qk_clip.py [--no-clip] [--steps 150]

The task (predict the previous token on a fixed set of sequences) rewards sharp attention, so
with a large Muon step the q.k logits grow without bound. After every optimizer step, QK-clip rescales the q/k projection
rows of the heads whose max logit exceeded tau (``magi_attn_extensions.apply_qk_clip_``). In real
training the per-head max logits come from ``calc_attn(..., return_max_logits=True)`` (or
``flex_flash_attn_func``) as ``meta.max_logits``; here they are computed densely on the batch.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from magi_attn_extensions import apply_qk_clip_, sdpa_func_with_sink


def newton_schulz(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Approximate orthogonalisation of a 2-D update (Muon's core)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g / (g.norm() + 1e-7)
    transposed = x.shape[0] > x.shape[1]
    if transposed:
        x = x.t()
    for _ in range(steps):
        s = x @ x.t()
        x = a * x + (b * s + c * s @ s) @ x
    return x.t() if transposed else x


class Muon(torch.optim.Optimizer):
    """Minimal Muon: momentum, orthogonalised update for 2-D weights, plain SGD otherwise."""

    def __init__(self, params, lr=0.02, momentum=0.95):
        super().__init__(params, dict(lr=lr, momentum=momentum))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                buf = self.state[p].setdefault("buf", torch.zeros_like(p))
                buf.mul_(group["momentum"]).add_(p.grad)
                upd = newton_schulz(buf) * max(1.0, p.shape[0] / p.shape[1]) ** 0.5 if p.dim() == 2 else buf
                p.add_(upd, alpha=-group["lr"])


class TinyAttnLM(torch.nn.Module):
    def __init__(self, vocab=32, dim=32, heads=4, kv_heads=2, head_dim=8):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.emb = torch.nn.Embedding(vocab, dim)
        self.pos = torch.nn.Parameter(torch.randn(64, dim) * 0.5)
        self.q_proj = torch.nn.Linear(dim, heads * head_dim, bias=False)
        self.k_proj = torch.nn.Linear(dim, kv_heads * head_dim, bias=False)
        self.v_proj = torch.nn.Linear(dim, kv_heads * head_dim, bias=False)
        self.o_proj = torch.nn.Linear(heads * head_dim, dim, bias=False)
        self.sink = torch.nn.Parameter(torch.zeros(1, heads))
        self.head = torch.nn.Linear(dim, vocab, bias=False)

    def forward(self, tokens):
        b, s = tokens.shape
        x = self.emb(tokens) + self.pos[:s]
        q = self.q_proj(x).view(b, s, self.heads, self.head_dim)
        k = self.k_proj(x).view(b, s, self.kv_heads, self.head_dim)
        v = self.v_proj(x).view(b, s, self.kv_heads, self.head_dim)
        out = sdpa_func_with_sink(q, k, v, self.sink, causal=True)
        return self.head(x + self.o_proj(out.reshape(b, s, -1))), q, k


@torch.no_grad()
def max_logits(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Per-q-head max of scale * q.k over causal cells ``[hq]`` (what calc_attn returns)."""
    g = q.shape[2] // k.shape[2]
    s = torch.einsum("bqhd,bkhd->bhqk", q, k.repeat_interleave(g, dim=2)) * q.shape[-1] ** -0.5
    causal = torch.ones(q.shape[1], k.shape[1], dtype=torch.bool).tril()
    return s.masked_fill(~causal, float("-inf")).amax(dim=(0, 2, 3))


def train(steps: int = 150, tau: float = 8.0, clip: bool = True, lr: float = 0.05, seed: int = 0) -> list[float]:
    """Returns the max attention logit (over heads) seen at every step."""
    torch.manual_seed(seed)
    model = TinyAttnLM()
    muon = Muon([p for n, p in model.named_parameters() if n.endswith("proj.weight")], lr=lr)
    adam = torch.optim.Adam([p for n, p in model.named_parameters() if not n.endswith("proj.weight")], lr=1e-2)
    data = torch.randint(0, 32, (16, 24))  # a fixed training set, used as one full batch
    history = []
    for _ in range(steps):
        tokens = data
        logits, q, k = model(tokens)
        loss = F.cross_entropy(logits[:, 1:].reshape(-1, 32), tokens[:, :-1].reshape(-1))
        ml = max_logits(q, k)
        history.append(ml.max().item())
        muon.zero_grad()
        adam.zero_grad()
        loss.backward()
        muon.step()
        adam.step()
        if clip:
            apply_qk_clip_(model.q_proj.weight, model.k_proj.weight, ml, tau, model.kv_heads)
            # K2 clips with the logits of the step's own forward (free, approximate); clipping again
            # with the updated weights makes the bound exact on this data
            _, q, k = model(tokens)
            apply_qk_clip_(model.q_proj.weight, model.k_proj.weight, max_logits(q, k), tau, model.kv_heads)
    return history


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--tau", type=float, default=8.0)
    ap.add_argument("--no-clip", action="store_true")
    args = ap.parse_args()
    hist = train(args.steps, args.tau, clip=not args.no_clip)
    print(f"tau={args.tau} clip={not args.no_clip} max logit: first {hist[0]:.2f}, "
          f"max over run {max(hist):.2f}, last {hist[-1]:.2f}")


if __name__ == "__main__":
    main()
