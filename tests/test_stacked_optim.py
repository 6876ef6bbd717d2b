"""StackedOptimizer against torch.optim: K plain models with K optimizers vs one stacked optimizer."""

import io

import pytest
import torch
from torch import nn

from batchlab.stacked.optim import build_optimizer, StackedOptimizer

K = 3
ATOL = 1e-12  # float64: the two sides differ only by rounding

BASE = {"momentum": 0.0, "nesterov": False, "weight_decay": 0.0, "betas": [0.9, 0.999]}
CONFIGS = {
    "sgd": {**BASE, "name": "sgd"},
    "sgd-momentum": {**BASE, "name": "sgd", "momentum": 0.9},
    "sgd-nesterov": {**BASE, "name": "sgd", "momentum": 0.9, "nesterov": True},
    "sgd-momentum-wd": {**BASE, "name": "sgd", "momentum": 0.9, "weight_decay": 0.05},
    "sgd-wd": {**BASE, "name": "sgd", "weight_decay": 0.05},
    "adam": {**BASE, "name": "adam"},
    "adam-wd": {**BASE, "name": "adam", "weight_decay": 0.05, "betas": [0.8, 0.99]},
}
each_config = pytest.mark.parametrize("cfg", CONFIGS.values(), ids=CONFIGS.keys())


# --- the two sides -----------------------------------------------------------------------------


def plain_models(seeds) -> list[nn.Module]:
    models = []
    for seed in seeds:
        torch.manual_seed(seed)
        models.append(nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)).double())
    return models


def stack(models) -> dict[str, torch.Tensor]:
    """The members' parameters as (K, ...) leaf tensors, in named_parameters order."""
    names = [name for name, _ in models[0].named_parameters()]
    return {name: torch.stack([m.get_parameter(name).detach() for m in models]).requires_grad_() for name in names}


def torch_optimizers(models, cfg) -> list[torch.optim.Optimizer]:
    return [build_optimizer(m.parameters(), cfg, lr=0.1) for m in models]


def random_grads(params, gen) -> dict[str, torch.Tensor]:
    return {name: torch.randn(p.shape, generator=gen, dtype=p.dtype) for name, p in params.items()}


def lr_schedule(steps: int, cfg: dict, seed: int = 1) -> torch.Tensor:
    """(steps, K): a different lr per member and per step, with some zero lrs among them."""
    gen = torch.Generator().manual_seed(seed)
    scale = 0.01 if cfg["name"] == "adam" else 0.1
    lrs = scale * (0.2 + torch.rand(steps, K, generator=gen, dtype=torch.float64))
    lrs[::7, 1] = 0.0
    return lrs


def step_plain(models, optimizers, grads, lr, members, only: int | None = None) -> None:
    """Plain model k gets member k's gradient and lr; with `only`, that model alone steps."""
    if only is not None:
        models, optimizers = models[only : only + 1], optimizers[only : only + 1]
    for m, opt, k in zip(models, optimizers, members):
        for name, p in m.named_parameters():
            p.grad = grads[name][k].clone()
        for group in opt.param_groups:
            group["lr"] = float(lr[k])
        opt.step()


def step_stacked(params, opt, grads, lr) -> None:
    for name, p in params.items():
        p.grad = grads[name].clone()
    opt.step(lr)


def assert_members_match(params, models, members) -> None:
    for k, m in zip(members, models):
        for name, p in m.named_parameters():
            torch.testing.assert_close(params[name][k], p.detach(), atol=ATOL, rtol=0, msg=f"member {k}, {name}")


def assert_same_state_dict(ours: dict, theirs: dict, atol: float = ATOL) -> None:
    """Same format (keys, groups, dtypes, devices), same values to rounding."""
    assert ours["param_groups"] == theirs["param_groups"]
    assert ours["state"].keys() == theirs["state"].keys()
    for index, state in theirs["state"].items():
        assert ours["state"][index].keys() == state.keys()
        for key, value in state.items():
            mine = ours["state"][index][key]
            assert (mine.dtype, mine.device, mine.shape) == (value.dtype, value.device, value.shape)
            torch.testing.assert_close(mine, value, atol=atol, rtol=0)


def through_checkpoint(state_dict: dict) -> dict:
    """A state_dict as a checkpoint gives it back: torch.save then torch.load."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer)


def run_both(cfg, steps: int, seed: int = 0):
    """K plain models with their torch optimizers and the stacked side, after `steps` equal updates."""
    models = plain_models(range(K))
    params = stack(models)
    optimizers, stacked = torch_optimizers(models, cfg), StackedOptimizer(params, cfg)
    gen, lrs = torch.Generator().manual_seed(seed), lr_schedule(steps, cfg)
    for t in range(steps):
        grads = random_grads(params, gen)
        step_plain(models, optimizers, grads, lrs[t], range(K))
        step_stacked(params, stacked, grads, lrs[t])
    return models, optimizers, params, stacked


# --- the update ------------------------------------------------------------------------------


@each_config
def test_every_member_follows_its_torch_optimizer_at_every_step(cfg):
    models = plain_models(range(K))
    params = stack(models)
    optimizers, stacked = torch_optimizers(models, cfg), StackedOptimizer(params, cfg)
    gen, lrs = torch.Generator().manual_seed(0), lr_schedule(60, cfg)
    for t in range(60):
        grads = random_grads(params, gen)
        step_plain(models, optimizers, grads, lrs[t], range(K))
        step_stacked(params, stacked, grads, lrs[t])
        assert_members_match(params, models, range(K))


@each_config
def test_member_state_dict_is_torchs_state_dict_of_that_member(cfg):
    fresh = StackedOptimizer(stack(plain_models(range(K))), cfg)
    template = build_optimizer(plain_models([0])[0].parameters(), cfg, lr=0.0).state_dict()
    assert fresh.member_state_dict(1) == template  # before any step: no state, lr 0

    _, optimizers, _, stacked = run_both(cfg, steps=5)
    for k in range(K):
        assert_same_state_dict(stacked.member_state_dict(k), optimizers[k].state_dict())


@each_config
def test_member_state_dict_is_a_snapshot(cfg):
    _, _, params, stacked = run_both(cfg, steps=3)
    before = stacked.member_state_dict(0)
    kept = through_checkpoint(before)
    grads = random_grads(params, torch.Generator().manual_seed(1))
    step_stacked(params, stacked, grads, torch.ones(K, dtype=torch.float64))
    assert_same_state_dict(before, kept, atol=0)


@each_config
def test_member_state_dict_resumes_in_torch(cfg):
    models, _, params, stacked = run_both(cfg, steps=10)
    resumed_models = plain_models(range(K))
    for resumed, k in zip(resumed_models, range(K)):
        resumed.load_state_dict({name: p[k] for name, p in params.items()})
    resumed_optimizers = torch_optimizers(resumed_models, cfg)
    for opt, k in zip(resumed_optimizers, range(K)):
        opt.load_state_dict(through_checkpoint(stacked.member_state_dict(k)))

    gen, lrs = torch.Generator().manual_seed(7), lr_schedule(20, cfg, seed=8)
    for t in range(20):
        grads = random_grads(params, gen)
        step_plain(resumed_models, resumed_optimizers, grads, lrs[t], range(K))
        step_stacked(params, stacked, grads, lrs[t])
    assert_members_match(params, resumed_models, range(K))


@each_config
def test_load_member_resumes_single_run_checkpoints(cfg):
    # Members trained for different numbers of steps (2 not at all), as separate runs would be.
    models = plain_models(range(K))
    optimizers = torch_optimizers(models, cfg)
    gen, lrs = torch.Generator().manual_seed(3), lr_schedule(10, cfg)
    for k, steps in enumerate([10, 4, 0]):
        for t in range(steps):
            step_plain(models, optimizers, random_grads(stack(models), gen), lrs[t], members=[k], only=k)

    params = stack(models)
    stacked = StackedOptimizer(params, cfg)
    gen = torch.Generator().manual_seed(4)
    for _ in range(3):  # state the loads must overwrite, not add to
        step_stacked(params, stacked, random_grads(params, gen), torch.zeros(K, dtype=torch.float64))
    for k in range(K):
        stacked.load_member(k, through_checkpoint(optimizers[k].state_dict()))
        assert_same_state_dict(stacked.member_state_dict(k), optimizers[k].state_dict(), atol=0)

    gen, lrs = torch.Generator().manual_seed(5), lr_schedule(20, cfg, seed=6)
    for t in range(20):
        grads = random_grads(params, gen)
        step_plain(models, optimizers, grads, lrs[t], range(K))
        step_stacked(params, stacked, grads, lrs[t])
    assert_members_match(params, models, range(K))


def test_load_member_refuses_other_hyperparameters():
    stacked = StackedOptimizer(stack(plain_models(range(K))), CONFIGS["sgd-momentum"])
    other = build_optimizer(plain_models([0])[0].parameters(), CONFIGS["sgd-nesterov"], lr=0.1)
    with pytest.raises(ValueError, match="nesterov"):
        stacked.load_member(0, other.state_dict())


# --- members stay apart ----------------------------------------------------------------------


@each_config
def test_select_keeps_the_chosen_members_state(cfg):
    keep = [2, 0]
    _, _, params, stacked = run_both(cfg, steps=10)
    kept_params = {name: p.detach()[keep].clone().requires_grad_() for name, p in params.items()}
    selected = stacked.select(keep, kept_params)
    for new_k, old_k in enumerate(keep):
        assert_same_state_dict(selected.member_state_dict(new_k), stacked.member_state_dict(old_k), atol=0)

    gen, lrs = torch.Generator().manual_seed(9), lr_schedule(20, cfg, seed=10)
    for t in range(20):
        grads = random_grads(params, gen)
        step_stacked(params, stacked, grads, lrs[t])
        step_stacked(kept_params, selected, {n: g[keep] for n, g in grads.items()}, lrs[t, keep])
    for name in params:
        torch.testing.assert_close(kept_params[name], params[name][keep], atol=ATOL, rtol=0)


@each_config
def test_a_nan_member_leaves_the_others_untouched(cfg):
    def train(poison: bool) -> dict[str, torch.Tensor]:
        params = stack(plain_models(range(K)))
        opt = StackedOptimizer(params, cfg)
        gen, lrs = torch.Generator().manual_seed(0), lr_schedule(20, cfg)
        for t in range(20):
            grads = random_grads(params, gen)
            if poison and t >= 5:
                for g in grads.values():
                    g[1] = float("nan")
            step_stacked(params, opt, grads, lrs[t])
        return params

    clean, poisoned = train(poison=False), train(poison=True)
    for name in clean:
        assert torch.isnan(poisoned[name][1]).all()
        for k in (0, 2):
            assert torch.equal(poisoned[name][k], clean[name][k])


# --- small contracts -------------------------------------------------------------------------


def test_zero_grad_sets_grads_to_none():
    params = stack(plain_models(range(K)))
    opt = StackedOptimizer(params, CONFIGS["adam"])
    grads = random_grads(params, torch.Generator().manual_seed(0))
    step_stacked(params, opt, grads, torch.ones(K, dtype=torch.float64))
    opt.zero_grad()
    assert all(p.grad is None for p in params.values())


def test_lr_needs_one_value_per_member():
    params = stack(plain_models(range(K)))
    opt = StackedOptimizer(params, CONFIGS["sgd"])
    with pytest.raises(ValueError, match="one value per member"):
        opt.step(torch.tensor(0.1))


@pytest.mark.parametrize("cfg", [CONFIGS["sgd-momentum"], CONFIGS["adam"]], ids=["sgd-momentum", "adam"])
def test_one_lr_tensor_reused_and_changed_in_place_is_read_afresh(cfg):
    # The trainer passes the same lr tensor step after step; the optimizer converts it once,
    # so an in-place change, or a member loaded in between, must still be seen.
    models = plain_models(range(K))
    params = stack(models)
    optimizers, stacked = torch_optimizers(models, cfg), StackedOptimizer(params, cfg)
    gen = torch.Generator().manual_seed(0)
    lr = torch.tensor([0.05, 0.01, 0.02], dtype=torch.float64)
    for t in range(12):
        if t == 4:
            lr.mul_(0.5)
        if t == 8:  # member 1 reloads its own state: its lr in the state_dict must not leak into the step
            stacked.load_member(1, {**stacked.member_state_dict(1), "param_groups": [
                {**stacked.member_state_dict(1)["param_groups"][0], "lr": 123.0}]})
        grads = random_grads(params, gen)
        step_plain(models, optimizers, grads, lr, range(K))
        step_stacked(params, stacked, grads, lr)
        assert_members_match(params, models, range(K))
    assert stacked.member_state_dict(0)["param_groups"][0]["lr"] == pytest.approx(0.025)


@each_config
def test_param_group_read_from_the_signature_is_torchs(cfg):
    from batchlab.stacked.optim import optimizer_group

    cls, group = optimizer_group(cfg, 0.1)
    built = build_optimizer([torch.zeros(2)], cfg, 0.1)
    assert type(built) is cls
    assert group == {key: value for key, value in built.param_groups[0].items() if key != "params"}


def test_gradient_clipping_is_torchs_per_member():
    from batchlab.stacked.optim import clip_member_grad_norms

    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(3, 4, 5, generator=g, dtype=torch.float64), torch.randn(3, 7, generator=g, dtype=torch.float64)]
    grads[0][1] *= 1e-3
    grads[1][1] *= 1e-3  # member 1's whole gradient is below the threshold: left as it is
    expected = []
    for k in range(3):
        member = [t[k].clone().requires_grad_() for t in grads]
        for p, t in zip(member, grads):
            p.grad = t[k].clone()
        torch.nn.utils.clip_grad_norm_(member, 0.5)
        expected.append([p.grad for p in member])
    before = [t[1].clone() for t in grads]
    clip_member_grad_norms(grads, 0.5)
    for k in range(3):
        for t, e in zip(grads, expected[k]):
            torch.testing.assert_close(t[k], e, rtol=1e-12, atol=1e-15)
    assert all(torch.equal(t[1], b) for t, b in zip(grads, before))
    assert torch.cat([t[0].flatten() for t in grads]).norm().item() == pytest.approx(0.5, rel=1e-5)
