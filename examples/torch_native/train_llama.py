"""Train a small Llama-style decoder with FSDP2 over a (dp, cp) DeviceMesh and magi-attention.

dp ranks read different packed sequences; the cp ranks of one dp group share a sequence and split
its tokens with `dispatch`. Attention is `calc_attn` over a varlen-causal key (one causal slice per
packed document), RoPE restarts at every document (indexed through `get_position_ids`), and the
loss is taken on `undispatch`ed logits. FSDP2 (`fully_shard`) shards parameters over the flattened
dp x cp group, so it also averages gradients over cp.

    torchrun --nproc_per_node=2 examples/torch_native/train_llama.py --cp 2 --steps 5     # CPU, gloo
    torchrun --nproc_per_node=8 examples/torch_native/train_llama.py --dp 2 --cp 4 \
        --seqlen 32768 --dim 1024 --layers 8 --heads 16 --kv-heads 4 --chunk-size 512   # GPUs, NCCL
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from magi_attention.api import (
    calc_attn,
    compute_pad_size,
    dispatch,
    get_position_ids,
    magi_attn_varlen_key,
    prefetch_varlen_key,
    undispatch,
)
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(max_len: int, head_dim: int, base: float = 10000.0):
    inv = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    ang = torch.outer(torch.arange(max_len, dtype=torch.float64), inv)
    return torch.cos(ang).float(), torch.sin(ang).float()


def apply_rope(x, cos, sin):
    """x [S, h, d]; cos/sin [S, d/2] already gathered at each token's position."""
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[:, None, :], sin[:, None, :]
    return torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), -1).flatten(-2).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, kv_heads: int):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, dim // heads
        self.wq = nn.Linear(dim, heads * self.head_dim, bias=False)
        self.wkv = nn.Linear(dim, 2 * kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(heads * self.head_dim, dim, bias=False)

    def forward(self, x, key, cos, sin):
        q = self.wq(x).view(-1, self.heads, self.head_dim)
        k, v = self.wkv(x).view(-1, 2 * self.kv_heads, self.head_dim).split(self.kv_heads, 1)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        out, _ = calc_attn(q, k, v.contiguous(), key)   # distributed over the cp group
        return self.wo(out.flatten(1))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, kv_heads: int, hidden: int):
        super().__init__()
        self.attn_norm, self.mlp_norm = RMSNorm(dim), RMSNorm(dim)
        self.attn = Attention(dim, heads, kv_heads)
        self.w13 = nn.Linear(dim, 2 * hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x, key, cos, sin):
        x = x + self.attn(self.attn_norm(x), key, cos, sin)
        gate, up = self.w13(self.mlp_norm(x)).chunk(2, -1)
        return x + self.w2(F.silu(gate) * up)


class Llama(nn.Module):
    def __init__(self, vocab: int, dim: int, layers: int, heads: int, kv_heads: int, max_len: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList(Block(dim, heads, kv_heads, 4 * dim) for _ in range(layers))
        self.norm = RMSNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        cos, sin = rope_tables(max_len, dim // heads)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, local_ids, key, local_pos):
        """local_ids/local_pos [shard]: this rank's tokens and their in-document positions."""
        x = self.embed(local_ids)
        cos, sin = self.cos[local_pos], self.sin[local_pos]
        for layer in self.layers:
            x = layer(x, key, cos, sin)
        return self.head(self.norm(x))


def packed_batch(seed: int, seqlen: int, vocab: int, min_doc: int):
    """A packed sequence of random documents: ids, next-token labels, cu_seqlens, doc positions."""
    g = torch.Generator().manual_seed(seed)
    cuts = [0]
    while cuts[-1] < seqlen:
        cuts.append(min(seqlen, cuts[-1] + int(torch.randint(min_doc, 3 * min_doc, (1,), generator=g))))
    # a learnable pattern: each document repeats a short random motif
    ids = torch.empty(seqlen, dtype=torch.long)
    doc_pos = torch.empty(seqlen, dtype=torch.long)
    labels = torch.full((seqlen,), -100, dtype=torch.long)
    for s, e in zip(cuts, cuts[1:]):
        motif = torch.randint(0, vocab, (int(torch.randint(2, 6, (1,), generator=g)),), generator=g)
        ids[s:e] = motif.repeat(math.ceil((e - s) / len(motif)))[: e - s]
        doc_pos[s:e] = torch.arange(e - s)
        labels[s:e - 1] = ids[s + 1:e]
    return ids, labels, torch.tensor(cuts, dtype=torch.int32), doc_pos


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dp", type=int, default=1)
    p.add_argument("--cp", type=int, default=None, help="default: world size / dp")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--seqlen", type=int, default=256, help="packed tokens per dp rank and step")
    p.add_argument("--vocab", type=int, default=128)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--chunk-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prefetch-keys", action="store_true",
                   help="after each forward, read the next batch and prefetch its key (prefetch_varlen_key: "
                        "its runtime is built on a background thread while this step's backward runs)")
    p.add_argument("--out", default=None, help="write the per-step losses (JSON) here on rank 0")
    a = p.parse_args(argv)

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    world, rank = dist.get_world_size(), dist.get_rank()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    device = torch.device("cuda") if cuda else torch.device("cpu")
    cp = a.cp or world // a.dp
    if a.dp * cp != world:
        raise SystemExit(f"train_llama.py: dp={a.dp} x cp={cp} must equal the world size {world}")
    mesh = init_device_mesh(device.type, (a.dp, cp), mesh_dim_names=("dp", "cp"))
    dp_rank, cp_group = mesh.get_local_rank("dp"), mesh.get_group("cp")

    torch.manual_seed(a.seed)  # identical initial weights everywhere
    model = Llama(a.vocab, a.dim, a.layers, a.heads, a.kv_heads, a.seqlen).to(device)
    dp_cp = mesh["dp", "cp"]._flatten("dp_cp")
    for layer in model.layers:
        fully_shard(layer, mesh=dp_cp)
    fully_shard(model, mesh=dp_cp)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.0)

    losses = []
    head_dim = a.dim // a.heads
    pad = compute_pad_size(a.seqlen, cp, a.chunk_size)
    key_args = (a.heads, a.kv_heads, head_dim, pad, a.chunk_size, cp_group)

    def batch_of(step):
        return packed_batch(a.seed * 1000 + step * a.dp + dp_rank, a.seqlen, a.vocab, a.seqlen // 8)

    batch = batch_of(0)
    for step in range(a.steps):
        ids, labels, cu_seqlens, doc_pos = batch
        ids, labels, doc_pos = ids.to(device), labels.to(device), doc_pos.to(device)
        key = magi_attn_varlen_key(cu_seqlens, cu_seqlens, *key_args, causal=True)
        local_ids = dispatch(ids, key)
        local_pos = doc_pos[get_position_ids(key)]   # RoPE restarts at each document
        logits = undispatch(model(local_ids, key, local_pos), key)   # [seqlen, vocab]
        loss = F.cross_entropy(logits.float(), labels, ignore_index=-100)
        batch = batch_of(step + 1)
        if a.prefetch_keys:  # the next key's runtime is built while this step's backward runs
            prefetch_varlen_key(batch[2], batch[2], *key_args, causal=True)
        # each cp rank back-propagates only through its own tokens, and FSDP averages over
        # dp x cp: scale by cp so the result is the dp mean of the full-sequence gradient
        (loss * cp).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        losses.append(mean.item() / world)
        if rank == 0:
            print(f"step {step}: loss {losses[-1]:.6f}", flush=True)
    if rank == 0 and a.out:
        with open(a.out, "w") as f:
            json.dump({"dp": a.dp, "cp": cp, "losses": losses}, f)
    # FSDP's module state forms reference cycles that hold the device mesh and so its process
    # groups. Collect them before the groups are destroyed: left to interpreter shutdown, gloo's
    # worker threads were torn down with Python half gone and aborted the process in ~1 run of 5.
    del model, opt
    gc.collect()
    dist.destroy_process_group()
    return {"losses": losses}


if __name__ == "__main__":
    main()
