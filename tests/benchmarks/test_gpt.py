"""The shakespeare-gpt task: the models (nanoGPT's and nGPT's), the sets they are given, the
transformer methods (AdamW, Muon chained with AdamW, geotorch per block, nGPT's recipe, ours), the
schedule and the evaluation (bits per character, next-character ECE, the posterior average)."""

import copy
import math

import pytest
import torch

from benchmarks.methods import METHODS, ChainedOptimizer, largest_violation
from benchmarks.tasks import TASKS
from benchmarks.tasks.gpt import CharGPT, NormalizedGPT, orthogonal_family, sphere_family
from constrained_sgld import SampleCollector, make_constraint

from .test_cli import _GeneratedGPT


def _task(**overrides):
    task = _GeneratedGPT("smoke", torch.device("cpu"), overrides)
    task.prepare()
    return task


def _train(task, method_name, steps=None, seed=0):
    method = METHODS[method_name]
    torch.manual_seed(seed)
    model = task.build_model(method.variant) if method.variant else task.build_model()
    optimizer, hp, constraints = method.build(model, task, seed)
    scheduler = task.scheduler(optimizer, task.steps_per_epoch())
    for i, (x, y) in enumerate(task.batches(torch.Generator().manual_seed(seed))):
        if steps is not None and i == steps:
            break
        optimizer.zero_grad()
        task.loss(model, x, y)[0].backward()
        optimizer.step()
        scheduler.step()
    return model, optimizer, constraints


def test_gpt_is_causal_with_a_tied_head():
    model = CharGPT(vocab=11, d=16, layers=2, heads=2, block=8)
    assert model.head.weight is model.wte.weight
    assert model.blocks[0].attn.c_attn.weight.shape == (48, 16)
    x = torch.randint(0, 11, (2, 8))
    changed = x.clone()
    changed[:, 5:] = (changed[:, 5:] + 1) % 11
    with torch.no_grad():
        assert torch.allclose(model(x)[:, :5], model(changed)[:, :5], atol=1e-6)  # the past does not see the future
        assert not torch.allclose(model(x)[:, 5:], model(changed)[:, 5:])


def test_normalized_gpt_starts_with_its_unit_vectors_and_keeps_them_under_our_sets():
    model = NormalizedGPT(vocab=11, d=16, layers=2, heads=2, block=8)
    family = sphere_family(model)
    names = set(family)
    assert {"wte.weight", "blocks.0.attn.c_attn.weight", "blocks.0.attn.c_proj.weight", "blocks.1.mlp.c_fc.weight", "blocks.1.mlp.c_proj.weight"} <= names
    params = dict(model.named_parameters())
    for name, spec in family.items():
        assert make_constraint(spec).violation(params[name]) < 1e-5, name
    # the output projections' unit vectors are their columns (the embedding dimension)
    assert family["blocks.0.attn.c_proj.weight"][1]["dim"] == 0
    assert torch.allclose(params["blocks.0.attn.c_proj.weight"].norm(dim=0), torch.ones(16))
    x = torch.randint(0, 11, (2, 8))
    assert torch.isfinite(model(x)).all()
    task = _task()
    for name in ("ngpt-s-cola-ud", "ngpt-s-cola-ud-rms", "ngpt-adam", "ngpt-s-adam", "ngpt-s-adam-row", "ngpt-s-spectral", "ngpt-s-cola-ud-rms-bc", "ngpt-s-cola-ud-rms-bc99", "ngpt-muon"):
        model, optimizer, constraints = _train(task, name)
        assert set(constraints) == set(sphere_family(model)), name
        assert largest_violation(model, optimizer, constraints) < 1e-5, name


def test_the_orthogonal_family_is_square_blocks():
    model = CharGPT(vocab=11, d=16, layers=1, heads=2, block=8)
    family = orthogonal_family(model)
    assert family["blocks.0.attn.c_attn.weight"] == ("orthogonal", {"blocks": 3})
    assert family["blocks.0.mlp.c_fc.weight"] == ("orthogonal", {"blocks": 4})
    assert family["blocks.0.attn.c_proj.weight"] == "orthogonal"
    assert "wte.weight" not in family and "blocks.0.ln_1.weight" not in family


@pytest.mark.parametrize("name", ["o-cola-ud-rms", "geotorch-orthogonal-adamw", "o-spectral", "o-spectral-project"])
def test_orthogonal_methods_keep_every_block_orthogonal(name):
    model, optimizer, constraints = _train(_task(), name)
    qkv = model.blocks[0].attn.c_attn.weight.detach()  # through geotorch's parametrisation where it has one
    d = qkv.shape[1]
    for block in qkv.reshape(3, d, d):
        assert torch.allclose(block.T @ block, torch.eye(d), atol=1e-4)
    assert largest_violation(model, optimizer, constraints) < 1e-4


def test_muon_takes_the_matrices_and_adamw_the_rest():
    task = _task()
    model, optimizer, _ = _train(task, "muon", steps=2)
    assert isinstance(optimizer, ChainedOptimizer)
    muon, adamw = optimizer.optimizers
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    on_muon = {id(p) for g in muon.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert on_muon == {id(named[n]) for n in orthogonal_family(model)}
    assert all(p.ndim == 2 for g in muon.param_groups for p in g["params"])
    assert id(named["wte.weight"]) not in on_muon
    # the scheduler's lr reaches both members, and the state round-trips
    assert optimizer.param_groups[0] is muon.param_groups[0]
    state = optimizer.state_dict()
    fresh_model = task.build_model()
    fresh_model.load_state_dict(model.state_dict())
    fresh, _, _ = METHODS["muon"].build(fresh_model, task, 0)
    fresh.load_state_dict(state)
    assert fresh.state_dict()["optimizers"][1]["state"].keys() == state["optimizers"][1]["state"].keys()


def test_adamw_decays_matrices_and_embeddings_only():
    task = _task()
    model = task.build_model()
    optimizer, hp, _ = METHODS["adamw"].build(model, task, 0)
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in decayed) == (p.ndim >= 2), name
    assert hp["betas"] == (0.9, 0.99)


def test_schedule_warms_up_then_decays_to_a_tenth():
    task = _task(steps_per_epoch=100, epochs=2)
    task.hp["warmup_steps"] = 10
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = task.scheduler(opt, 100)
    lrs = []
    for _ in range(200):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3)


def test_evaluation_scores_and_the_posterior_average():
    task = _task()
    model, _, _ = _train(task, "o-cola-ud-rms-tempered")
    scores = task.evaluate(model)
    for prefix in ("val", "test"):
        assert scores[f"{prefix}_bpc"] == pytest.approx(scores[f"{prefix}_loss"] / math.log(2))
        assert 0 <= scores[f"{prefix}_ece"] <= 1 and 0 <= scores[f"{prefix}_char_accuracy"] <= 1
    # a uniform predictor: log2(vocabulary) bits per character, calibrated to its accuracy
    uniform = task._scores(lambda x: torch.full((*x.shape, len(task.chars)), 1 / len(task.chars)), task.test_ids)
    assert uniform["nats"] == pytest.approx(math.log(len(task.chars)))
    collector = SampleCollector(model)
    collector.update()
    collector.update()
    posterior = task.evaluate_posterior(collector)
    assert posterior["posterior_samples"] == 2
    # two identical snapshots: the average is the model
    assert posterior["posterior_bpc"] == pytest.approx(scores["test_bpc"], rel=1e-6)


def test_the_tempered_sampler_runs_at_the_posterior_temperature():
    assert TASKS["shakespeare-gpt"].hparams["posterior_temperature"] == pytest.approx(1 / 4_450_334, rel=1e-3)
    task = _task()
    model = task.build_model()
    optimizer, hp, _ = METHODS["o-cola-ud-rms-tempered"].build(model, task, 0)
    assert hp["temperature"] == task.hp["posterior_temperature"]
    assert all(g["temperature"] == hp["temperature"] for g in optimizer.param_groups)


def test_an_ensemble_member_clips_its_own_gradient():
    """The transformer's deep ensemble clips each member's gradient by its own norm, as if trained
    alone: one norm over both members would scale member 0 by member 1's gradient too."""
    from benchmarks.ensemble import DeepEnsemble, member_batches
    from benchmarks.runner import clip_gradients

    task = _task()
    ensemble = DeepEnsemble([task.build_model() for _ in range(2)])
    alone = copy.deepcopy(ensemble.members[0])
    x, y = next(member_batches(task, [torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)]))
    task.loss(ensemble, x, y)[0].backward()
    task.loss(alone, x[: len(x) // 2], y[: len(y) // 2])[0].backward()
    clip = 0.5 * torch.nn.utils.get_total_norm([p.grad for p in alone.parameters()]).item()  # binds
    clip_gradients(ensemble, clip)
    clip_gradients(alone, clip)
    for p, q in zip(ensemble.members[0].parameters(), alone.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-8)
    for member in ensemble.members:
        assert torch.nn.utils.get_total_norm([p.grad for p in member.parameters()]).item() == pytest.approx(clip, rel=1e-5)


def test_chains_from_the_map_sample_the_last_epoch_at_the_ensembles_cost(tmp_path):
    """map-o-cola-ud-rms: the task's warm-up and cosine over the optimisation stage, then one chain
    at map_sample_lr and T = 1 / N, snapshots from the sampling epoch only; ens-o-cola-ud-rms: the
    same from each of the ensemble's members, 2x the gradients, the snapshots pooled."""
    from benchmarks.runner import POSTERIOR_SAMPLES, train_one

    task = _task(epochs=3, steps_per_epoch=8)
    for name, members in (("map-o-cola-ud-rms", 1), ("ens-o-cola-ud-rms", 2)):
        record = train_one(task, METHODS[name], 0, progress=False)
        hp, last = record["hyperparameters"], record["epochs"][-1]
        assert record["gradient_evaluations"] == 3 * 8 * members and hp.get("members", 1) == members
        assert "cosine" in hp["schedule"] and hp["sample_lr"] == task.hp["map_sample_lr"] and hp["temperature"] == task.hp["map_temperature"]
        assert last["posterior_samples"] == min(POSTERIOR_SAMPLES // members, 4)  # the sampling epoch's second half
        assert math.isfinite(last["posterior_bpc"]) and record["max_violation"] < 1e-4
