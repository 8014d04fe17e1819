"""Train a tiny randomly initialised transformers Llama with context parallelism via magi-attention.

`magi_attn_extensions.transformers.register()` adds `attn_implementation="magi_attention"`;
`set_cp_group(model, group)` makes every attention layer run `calc_attn` with the group's most
recent key. Each step: build a varlen-causal key for the packed documents, `dispatch` the token ids,
feed the model this rank's tokens with their in-document positions (`get_position_ids`),
`undispatch` the logits for the loss, and sum the parameter gradients over the cp group (each rank
back-propagates only through its own tokens).

    torchrun --nproc_per_node=2 examples/transformers/train.py --steps 5      # CPU (gloo) or GPUs (NCCL)
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from magi_attention.api import (
    compute_pad_size,
    dispatch,
    get_position_ids,
    magi_attn_varlen_key,
    undispatch,
)
from magi_attn_extensions.transformers import register, set_cp_group
from transformers import LlamaConfig, LlamaForCausalLM


def packed_batch(seed: int, seqlen: int, vocab: int):
    """Random documents, each repeating a short motif: ids, labels (-100 across documents), cu, pos."""
    g = torch.Generator().manual_seed(seed)
    cuts = [0]
    while cuts[-1] < seqlen:
        cuts.append(min(seqlen, cuts[-1] + int(torch.randint(seqlen // 8, seqlen // 3, (1,), generator=g))))
    ids = torch.empty(seqlen, dtype=torch.long)
    pos = torch.empty(seqlen, dtype=torch.long)
    labels = torch.full((seqlen,), -100, dtype=torch.long)
    for s, e in zip(cuts, cuts[1:]):
        motif = torch.randint(0, vocab, (int(torch.randint(2, 6, (1,), generator=g)),), generator=g)
        ids[s:e] = motif.repeat(-(-(e - s) // len(motif)))[: e - s]
        pos[s:e] = torch.arange(e - s)
        labels[s:e - 1] = ids[s + 1:e]
    return ids, labels, torch.tensor(cuts, dtype=torch.int32), pos


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--chunk-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--out", default=None, help="write the per-step losses (JSON) here on rank 0")
    a = p.parse_args(argv)

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    device = torch.device("cuda") if cuda else torch.device("cpu")
    group, cp = dist.group.WORLD, dist.get_world_size()

    register()
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=a.seqlen)
    torch.manual_seed(0)  # identical weights on every rank
    model = LlamaForCausalLM._from_config(cfg, attn_implementation="magi_attention").to(device)
    set_cp_group(model, group)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.0)
    head_dim = cfg.hidden_size // cfg.num_attention_heads

    losses = []
    for step in range(a.steps):
        ids, labels, cu, doc_pos = (t.to(device) for t in packed_batch(step, a.seqlen, cfg.vocab_size))
        pad = compute_pad_size(a.seqlen, cp, a.chunk_size)
        key = magi_attn_varlen_key(cu, cu, cfg.num_attention_heads, cfg.num_key_value_heads,
                                   head_dim, pad, a.chunk_size, group, causal=True)
        local_ids = dispatch(ids, key)[None]                      # [1, shard]
        position_ids = doc_pos[get_position_ids(key)][None]      # RoPE restarts per document
        logits = model(input_ids=local_ids, position_ids=position_ids).logits[0]
        loss = F.cross_entropy(undispatch(logits, key).float(), labels, ignore_index=-100)
        loss.backward()
        for prm in model.parameters():   # every rank holds all weights: sum the partial grads
            if prm.grad is not None:
                dist.all_reduce(prm.grad, group=group)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if dist.get_rank() == 0:
            print(f"step {step}: loss {losses[-1]:.6f}", flush=True)
    if dist.get_rank() == 0 and a.out:
        with open(a.out, "w") as f:
            json.dump({"cp": cp, "losses": losses}, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
