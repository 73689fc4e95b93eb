"""Hugging Face transformers, for real (tiny configs, nothing downloaded): GPT-2's Conv1D layout
with per-block Q, K, V, and the route where the Trainer builds the optimiser itself
(``optimizer_cls_and_kwargs``) from bare parameters tagged by ``constrain``; resume bit for bit."""

import pytest
import torch

import constrained_sgld as cs

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

pytestmark = pytest.mark.filterwarnings("ignore")

GPT2_SETS = {
    "*.attn.c_attn.weight": ("orthogonal", {"blocks": 3, "transposed": True}),  # Conv1D: (d, 3d)
    "*.attn.c_proj.weight": ("orthogonal", {"transposed": True}),
    "*.mlp.c_fc.weight": ("orthogonal", {"blocks": 4, "transposed": True}),
    "*.mlp.c_proj.weight": ("orthogonal", {"scale": 2.0, "transposed": True}),
}


def _gpt2(d):
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=50, n_positions=32, n_embd=d, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config)


def _qkv_errors(model, d):
    errors = []
    for block in model.transformer.h:
        for q in block.attn.c_attn.weight.detach().split(d, dim=1):  # (d, 3d): Q, K, V are column blocks
            errors.append((q.T @ q - torch.eye(d)).abs().max().item())
    return errors


class _Tokens(torch.utils.data.Dataset):
    def __init__(self, n=32, length=16):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 50, (n, length), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def _trainer(model, out, steps, optimizer_cls):
    args = transformers.TrainingArguments(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=4, save_steps=3, save_strategy="steps",
        logging_steps=100, report_to=[], use_cpu=True, seed=0, data_seed=0, max_grad_norm=1.0, disable_tqdm=True,
    )
    kwargs = {"lr": 1e-3, "momentum": 0.9, "temperature": 1e-5, "preconditioner": "rmsprop", "seed": 0}
    return transformers.Trainer(model=model, args=args, train_dataset=_Tokens(), optimizer_cls_and_kwargs=(optimizer_cls, kwargs))


@pytest.mark.parametrize("d", [64, 96])  # 96: where a row split of (96, 288) would divide
def test_gpt2_trainer_built_optimiser_keeps_q_k_v_orthogonal_and_resumes_bit_for_bit(tmp_path, d):
    model = cs.constrain(_gpt2(d), GPT2_SETS)
    trainer = _trainer(model, tmp_path, 6, cs.ConstrainedUnderdampedSGLD)
    trainer.train()
    assert max(_qkv_errors(model, d)) < 1e-4
    constrained = {g["constraint"].spec()[0] for g in trainer.optimizer.param_groups if g["constraint"] is not None}
    assert constrained == {"orthogonal"}
    final = {k: v.clone() for k, v in model.state_dict().items()}

    again = cs.constrain(_gpt2(d), GPT2_SETS)
    resumed = _trainer(again, tmp_path, 6, cs.ConstrainedUnderdampedSGLD)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-3"))
    for k, v in again.state_dict().items():
        assert torch.equal(v, final[k]), k


def test_gpt2_without_transposed_is_refused_or_warned_never_silent():
    model = _gpt2(64)
    with pytest.raises(ValueError, match="needs transposed=True"):
        cs.ConstrainedSGLD(model.named_parameters(), constraints={"*.attn.c_attn.weight": ("orthogonal", {"blocks": 3})})
    model = _gpt2(96)
    with pytest.warns(UserWarning, match="pass transposed=True"):
        cs.ConstrainedSGLD(model.named_parameters(), constraints={"*.attn.c_attn.weight": ("orthogonal", {"blocks": 3})})


def test_constrain_knows_conv1d_is_in_out_and_refuses_the_wrong_axis():
    """Given the module, `constrain` sees GPT-2's Conv1D layers: a row split of c_attn and a
    per-row sphere (each input's weights) are refused with the spec to pass; those specs then keep
    Q, K, V orthogonal and each output unit's column on the sphere."""
    model = _gpt2(96)  # where a row split of (96, 288) would divide
    with pytest.raises(ValueError, match=r"Conv1D, stored as \(in, out\).*'transposed': True"):
        cs.constrain(model, {"*.attn.c_attn.weight": ("orthogonal", {"blocks": 3})})
    with pytest.raises(ValueError, match=r"Conv1D.*'dim': 0"):
        cs.constrain(model, {"*.mlp.c_fc.weight": "sphere"})
    assert not any(cs.tags.constraint_tag(p) for p in model.parameters())  # nothing tagged
    cs.constrain(model, {"*.attn.c_attn.weight": ("orthogonal", {"blocks": 3, "transposed": True}), "*.mlp.c_fc.weight": ("sphere", {"dim": 0})})
    opt = cs.ConstrainedSGLD(model.parameters(), lr=1e-3, preconditioner="rmsprop", temperature=1e-6, seed=0)
    ids = torch.randint(0, 50, (4, 16), generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        opt.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
    assert max(_qkv_errors(model, 96)) < 1e-4
    for block in model.transformer.h:
        torch.testing.assert_close(block.mlp.c_fc.weight.detach().norm(dim=0), torch.ones(4 * 96), atol=1e-5, rtol=0)


def test_llama_separate_projections_with_grouped_heads():
    config = transformers.LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    sets = {"*.self_attn.q_proj.weight": "orthogonal", "*.self_attn.k_proj.weight": "orthogonal",
            "*.self_attn.v_proj.weight": "orthogonal", "*.self_attn.o_proj.weight": "orthogonal"}
    opt = cs.ConstrainedSGLD(cs.constrain(model, sets).parameters(), lr=1e-2)
    ids = torch.randint(0, 50, (2, 16))
    for _ in range(3):
        opt.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
    k = model.model.layers[0].self_attn.k_proj.weight.detach()  # (kv_heads * head_dim, d) = (16, 32): wide
    assert k.shape == (16, 32)
    torch.testing.assert_close(k @ k.T, torch.eye(16), atol=1e-5, rtol=0)
    assert max(float(v) for v in opt.violations()) < 1e-5
