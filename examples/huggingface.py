"""Hugging Face: GPT-2 (a tiny one built from its config, nothing downloaded) trained by the
Trainer with an optimiser it builds itself, its query, key and value kept orthogonal block by block.

    pip install "constrained-sgld[integrations]"
    python examples/huggingface.py [--steps 20] [--out DIR]

GPT-2's Conv1D stores its weights as (in, out): ``transposed=True`` makes ``blocks`` split the
outputs (Q, K, V). ``constrain`` tags the parameters, so that the Trainer, which passes bare
parameters to ``optimizer_cls``, keeps the sets.
"""

import argparse
import tempfile

import torch
import transformers

import constrained_sgld as cs

SETS = {
    "*.attn.c_attn.weight": ("orthogonal", {"blocks": 3, "transposed": True}),  # (d, 3d): Q, K, V
    "*.attn.c_proj.weight": ("orthogonal", {"transposed": True}),
    "*.mlp.c_fc.weight": ("orthogonal", {"blocks": 4, "transposed": True}),      # (d, 4d)
    "*.mlp.c_proj.weight": ("orthogonal", {"scale": 2.0, "transposed": True}),   # (4d, d)
}


class RandomText(torch.utils.data.Dataset):
    def __init__(self, vocab, n=64, length=32):
        self.ids = torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=64, n_positions=64, n_embd=96, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0)
    model = cs.constrain(transformers.GPT2LMHeadModel(config), SETS)
    out = args.out or tempfile.mkdtemp()
    training = transformers.TrainingArguments(output_dir=out, max_steps=args.steps, per_device_train_batch_size=8, report_to=[],
                                              use_cpu=True, logging_steps=max(1, args.steps // 4), save_strategy="no", disable_tqdm=True)
    optimiser = (cs.ConstrainedUnderdampedSGLD, {"lr": 1e-4, "momentum": 0.9, "preconditioner": "rmsprop"})  # RMSprop's lr x (1 - momentum)
    trainer = transformers.Trainer(model=model, args=training, train_dataset=RandomText(64), optimizer_cls_and_kwargs=optimiser)
    trainer.train()
    d = config.n_embd
    worst = max((b.T @ b - torch.eye(d)).abs().max().item() for h in model.transformer.h for b in h.attn.c_attn.weight.detach().split(d, dim=1))
    print(f"GPT-2, {args.steps} steps: largest deviation of a Q, K or V block from orthogonal {worst:.1e}")
    # the Trainer wraps the optimiser (accelerate's AcceleratedOptimizer): ours is .optimizer
    print(f"largest violation of every set: {max(float(v) for v in trainer.optimizer.optimizer.violations()):.1e}")


if __name__ == "__main__":
    main()
