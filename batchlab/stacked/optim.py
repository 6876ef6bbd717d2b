"""One optimizer for K stacked runs: torch.optim.SGD / Adam, member by member, in one pass.

Every parameter is a tensor of shape (K, *plain_shape) in a dict `name -> tensor` whose
names and order are those of the plain module's `named_parameters()`. Member k has its own
learning rate (a (K,) tensor given to every `step`) and its own optimizer state; all the
arithmetic is elementwise along the member axis, so a member's update reads only its own
gradient, weights, lr and state (a NaN in one member stays in that member).

The hyperparameters come from the torch optimizer that build_optimizer makes
of the study's optimizer config, so a stacked member is configured exactly like a single
run, and `member_state_dict` / `load_member` speak that optimizer's state_dict format: the
bridge to the single-run checkpoints in both directions.

The update follows torch's own formulas op for op (torch/optim/sgd.py, adam.py); only the
per-member learning rate turns torch's scalar `alpha=-lr` into a multiplication by a
(K, 1, ..., 1) tensor, so results agree with torch.optim to float rounding.
"""

from __future__ import annotations

import inspect

import torch
from torch import Tensor


# Hyperparameters that change the update: a state_dict to be loaded into a member must agree
# on them, because all members share one setting (lr, foreach, fused... do not count).
UPDATE_HYPERPARAMETERS = (
    "momentum",
    "dampening",
    "nesterov",
    "weight_decay",
    "maximize",
    "betas",
    "eps",
    "amsgrad",
    "decoupled_weight_decay",
)
# Options torch.optim offers but the study's config never sets; refused rather than half-done.
def _optimizer_class(cfg: dict, lr: float) -> tuple[type[torch.optim.Optimizer], dict]:
    """The torch optimizer of a study's optimizer config, and its keyword arguments."""
    if cfg["name"] == "sgd":
        return torch.optim.SGD, dict(lr=lr, momentum=cfg["momentum"], nesterov=cfg["nesterov"], weight_decay=cfg["weight_decay"])
    if cfg["name"] == "adam":
        return torch.optim.Adam, dict(lr=lr, betas=tuple(cfg["betas"]), weight_decay=cfg["weight_decay"])
    raise ValueError(f"unknown optimizer {cfg['name']!r}; choose sgd or adam")


def build_optimizer(params, cfg: dict, lr: float) -> torch.optim.Optimizer:
    cls, kwargs = _optimizer_class(cfg, lr)
    return cls(params, **kwargs)


def optimizer_group(cfg: dict, lr: float) -> tuple[type[torch.optim.Optimizer], dict]:
    """build_optimizer's class and the hyperparameters its param group holds (all but "params"),
    read from the constructor's signature: building a torch optimizer imports torch._dynamo,
    about a second of every training job."""
    cls, kwargs = _optimizer_class(cfg, lr)
    defaults = {name: p.default for name, p in inspect.signature(cls).parameters.items() if name != "params"}
    return cls, {**defaults, **kwargs}


UNSUPPORTED_SETTINGS = {"dampening": 0, "maximize": False, "amsgrad": False, "decoupled_weight_decay": False}
NO_LR_YET = 0.0  # a member's lr in its state_dict before any step


class StackedOptimizer:
    """torch.optim.SGD or Adam, as build_optimizer configures it, for K stacked members at once."""

    def __init__(self, params: dict[str, Tensor], cfg: dict):
        self.params = params
        self.cfg = cfg
        self.num_members = _num_members(params)
        self.device = next(iter(params.values())).device
        cls, self.group = optimizer_group(cfg, NO_LR_YET)
        self.is_adam = cls is torch.optim.Adam
        self.max_grad_norm = cfg.get("max_grad_norm")
        _refuse_unsupported(self.group)
        self.state = {name: self._fresh_state(p) for name, p in params.items()}
        # Host-side, so a step never waits for the device: whether torch would hold state for
        # (param, member), i.e. it has been updated since it started fresh.
        self.has_state = {name: [False] * self.num_members for name in params}
        self.last_lr = torch.full((self.num_members,), NO_LR_YET, dtype=torch.float64, device=self.device)
        self._lr_given, self._lr_given_version = None, None  # the lr tensor last passed to step, and its version
        self._neg_lr: dict[tuple[str, ...], list[Tensor]] = {}  # -last_lr shaped for the updated parameters

    # --- the update ---------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, lr: Tensor) -> None:
        """One update of every member, member k with learning rate lr[k]; params without a grad are skipped.

        The parameters are updated together with torch's `_foreach` ops: the same elementwise
        arithmetic as one parameter at a time, in a handful of calls instead of a few per parameter.
        """
        lr = self._checked_lr(lr)
        names = [name for name, p in self.params.items() if p.grad is not None]  # like torch.optim: no grad, no update
        if names:
            params = [self.params[name] for name in names]
            grads = [p.grad for p in params]
            if self.max_grad_norm is not None:
                clip_member_grad_norms(grads, self.max_grad_norm)
            states = [self.state[name] for name in names]
            if self.is_adam:
                self._adam_update(params, grads, states, lr)
            else:
                self._sgd_update(params, grads, states, self._neg_lr_views(names))
            for name in names:
                self.has_state[name] = [True] * self.num_members

    def _neg_lr_views(self, names: list[str]) -> list[Tensor]:
        """-last_lr broadcastable over each named parameter, kept until the LR changes (seldom, by schedule)."""
        key = tuple(names)
        if key not in self._neg_lr:
            self._neg_lr = {key: _per_member_each(-self.last_lr, [self.params[name] for name in names])}
        return self._neg_lr[key]

    def _sgd_update(self, params: list[Tensor], grads: list[Tensor], states: list[dict], neg_lr: list[Tensor]) -> None:
        momentum, weight_decay = self.group["momentum"], self.group["weight_decay"]
        if weight_decay != 0:
            grads = torch._foreach_add(grads, params, alpha=weight_decay)
        if momentum != 0:
            bufs = [state["momentum_buffer"] for state in states]
            # A fresh member's buffer is zeros, so this gives buf = grad on its first step just
            # like torch's `buf = grad.clone()` (exact with dampening 0), without a per-member branch.
            torch._foreach_mul_(bufs, momentum)
            torch._foreach_add_(bufs, grads)
            grads = torch._foreach_add(grads, bufs, alpha=momentum) if self.group["nesterov"] else bufs
        torch._foreach_addcmul_(params, grads, neg_lr)

    def _adam_update(self, params: list[Tensor], grads: list[Tensor], states: list[dict], lr: Tensor) -> None:
        beta1, beta2 = self.group["betas"]
        weight_decay, eps = self.group["weight_decay"], self.group["eps"]
        if weight_decay != 0:
            grads = torch._foreach_add(grads, params, alpha=weight_decay)
        steps = [state["step"] for state in states]
        exp_avgs = [state["exp_avg"] for state in states]
        exp_avg_sqs = [state["exp_avg_sq"] for state in states]
        torch._foreach_add_(steps, 1)
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
        # torch computes the bias corrections and the step size in double precision (Python
        # floats) and casts them to the parameter's dtype only inside the final kernels.
        step = torch.stack(steps).to(torch.float64)  # (P, K): each parameter's step count, member by member
        bias_correction1 = 1 - beta1**step
        bias_correction2_sqrt = (1 - beta2**step) ** 0.5
        neg_step_size = -(lr / bias_correction1)
        denom = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denom, _per_member_each(bias_correction2_sqrt, params))
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(params, torch._foreach_mul(exp_avgs, _per_member_each(neg_step_size, params)), denom)

    def zero_grad(self) -> None:
        for p in self.params.values():
            p.grad = None

    # --- one member in torch.optim's format -------------------------------------------------

    def member_state_dict(self, k: int) -> dict:
        """Member k alone, exactly as torch.optim.<Opt>(plain_module.parameters(), ...).state_dict() has it."""
        self._check_member(k)
        state = {}
        for index, name in enumerate(self.params):
            if self.has_state[name][k] and self.state[name]:  # plain SGD keeps no state at all
                state[index] = self._member_param_state(name, k)
        group = {**self.group, "lr": float(self.last_lr[k]), "params": list(range(len(self.params)))}
        return {"state": state, "param_groups": [group]}

    def _member_param_state(self, name: str, k: int) -> dict:
        # Copies, not views: torch.save of a view would write the whole stacked storage.
        state = self.state[name]
        if self.is_adam:
            return {
                "step": state["step"][k].to("cpu", copy=True),  # torch keeps it on the CPU unless capturable or fused
                "exp_avg": state["exp_avg"][k].clone(),
                "exp_avg_sq": state["exp_avg_sq"][k].clone(),
            }
        return {"momentum_buffer": state["momentum_buffer"][k].clone()}

    def load_member(self, k: int, state_dict: dict) -> None:
        """Member k continues from a torch.optim state_dict, e.g. one a single-run checkpoint holds."""
        self._check_member(k)
        group = self._checked_group(state_dict)
        for position, name in enumerate(self.params):
            # As torch's load_state_dict: the group's params list maps saved indices to positions.
            saved = state_dict["state"].get(group["params"][position])
            self._load_member_param_state(name, k, saved)
        self.last_lr[k] = group["lr"]
        self._lr_given = None  # the next step converts its lr afresh

    def _load_member_param_state(self, name: str, k: int, saved: dict | None) -> None:
        state, tensors = self.state[name], self._tensors_to_restore(saved)
        if not tensors:
            # Nothing saved: torch would start this parameter fresh for this member.
            for tensor in state.values():
                tensor[k].zero_()
        for key, value in tensors.items():
            state[key][k].copy_(_checked_shape(torch.as_tensor(value), state[key].shape[1:], f"{name}.{key}"))
        self.has_state[name][k] = bool(tensors)

    def _tensors_to_restore(self, saved: dict | None) -> dict:
        """The saved tensors this optimizer keeps for one parameter; empty where torch would start fresh."""
        if not saved:
            return {}
        if self.is_adam:
            return {key: saved[key] for key in ("step", "exp_avg", "exp_avg_sq")}
        buffer = saved.get("momentum_buffer")
        return {"momentum_buffer": buffer} if self.group["momentum"] != 0 and buffer is not None else {}

    # --- keeping some members ----------------------------------------------------------------

    def select(self, keep: list[int], params: dict[str, Tensor]) -> StackedOptimizer:
        """A new optimizer of `params` (the kept members, in `keep`'s order) carrying those members' state."""
        for k in keep:
            self._check_member(k)
        _check_same_layout(self.params, params, len(keep))
        selected = StackedOptimizer(params, self.cfg)
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        for name, state in self.state.items():
            for key, tensor in state.items():
                selected.state[name][key].copy_(tensor.index_select(0, index))
            selected.has_state[name] = [self.has_state[name][k] for k in keep]
        selected.last_lr = self.last_lr.index_select(0, index)
        return selected

    # --- pieces --------------------------------------------------------------------------------

    def _fresh_state(self, p: Tensor) -> dict[str, Tensor]:
        """A parameter's state before any step: zeros for every member (what torch starts from)."""
        if self.is_adam:
            step = torch.zeros(self.num_members, dtype=_torch_step_dtype(), device=p.device)
            return {"step": step, "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
        if self.group["momentum"] != 0:
            return {"momentum_buffer": torch.zeros_like(p)}
        return {}

    def _checked_lr(self, lr: Tensor) -> Tensor:
        """lr as `last_lr`, a float64 copy of its own, converted again only when a new tensor comes
        or this one changed in place (the trainer passes one tensor until the schedule moves)."""
        if not isinstance(lr, Tensor) or lr.shape != (self.num_members,):
            raise ValueError(f"lr must be a tensor of shape ({self.num_members},), one value per member; got {lr!r}")
        if lr.device != self.device:
            raise ValueError(f"lr is on {lr.device}, the parameters on {self.device}")
        if lr is not self._lr_given or lr._version != self._lr_given_version:
            self._lr_given, self._lr_given_version = lr, lr._version
            self.last_lr, self._neg_lr = lr.detach().to(torch.float64, copy=True), {}
        return self.last_lr

    def _checked_group(self, state_dict: dict) -> dict:
        groups = state_dict["param_groups"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(self.params):
            counts = [len(g["params"]) for g in groups]
            raise ValueError(f"expected one param group of {len(self.params)} params, got groups of {counts}")
        group = groups[0]
        for key in UPDATE_HYPERPARAMETERS:
            if key in self.group and _as_comparable(group.get(key, self.group[key])) != _as_comparable(self.group[key]):
                raise ValueError(f"state_dict has {key}={group[key]!r}, this optimizer {self.group[key]!r}")
        return group

    def _check_member(self, k: int) -> None:
        if not 0 <= k < self.num_members:
            raise IndexError(f"member {k} out of range for {self.num_members} members")


def clip_member_grad_norms(grads: list[Tensor], max_norm: float) -> None:
    """Scale each member's gradients, over all its parameters, to a 2-norm of at most `max_norm`, in place:
    torch.nn.utils.clip_grad_norm_ on each member's own model (word_language_model clips its LSTM at 0.25)."""
    norms = torch.stack([g.flatten(1).pow(2).sum(1) for g in grads]).sum(0).sqrt()  # (K,)
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)  # torch's clip coefficient
    torch._foreach_mul_(grads, _per_member_each(scale, grads))


def _per_member_each(values: Tensor, like: list[Tensor]) -> list[Tensor]:
    """Per-member values as (K, 1, ..., 1) in the parameters' dtype, one to broadcast over each tensor of `like`.

    `values` is (K,), the same for every tensor, or (len(like), K), a row for each.
    """
    values = values.to(like[0].dtype)
    rows = values.unbind(0) if values.dim() == 2 else [values] * len(like)
    return [row.view(-1, *([1] * (p.dim() - 1))) for row, p in zip(rows, like)]


def _num_members(params: dict[str, Tensor]) -> int:
    if not params:
        raise ValueError("no parameters to optimize")
    sizes = {p.shape[0] if p.dim() else None for p in params.values()}
    devices = {p.device for p in params.values()}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(f"every parameter needs the same leading member axis; got sizes {sizes}")
    if len(devices) != 1:
        raise ValueError(f"all parameters must be on one device; got {devices}")
    return sizes.pop()


def _check_same_layout(old: dict[str, Tensor], new: dict[str, Tensor], num_members: int) -> None:
    """The selected params must be the same parameters, with `num_members` members."""
    if list(old) != list(new):
        raise ValueError("the selected params must have the same names, in the same order")
    for name in old:
        expected = (num_members, *old[name].shape[1:])
        if new[name].shape != expected:
            raise ValueError(f"{name}: expected shape {expected}, got {tuple(new[name].shape)}")


def _checked_shape(value: Tensor, plain_shape: torch.Size, what: str) -> Tensor:
    # copy_ would broadcast a wrongly shaped tensor silently.
    if value.shape != plain_shape:
        raise ValueError(f"{what}: saved state has shape {tuple(value.shape)}, the parameter {tuple(plain_shape)}")
    return value


def _refuse_unsupported(group: dict) -> None:
    for key, supported in UNSUPPORTED_SETTINGS.items():
        if group.get(key, supported) != supported:
            raise NotImplementedError(f"stacked optimizer does not support {key}={group[key]!r}")


def _as_comparable(value):
    # betas come back as a tuple from torch and as a list from YAML or JSON.
    return tuple(value) if isinstance(value, (list, tuple)) else value


def _torch_step_dtype() -> torch.dtype:
    # torch.optim.Adam's `step` dtype (optimizer._get_scalar_dtype), kept so state_dicts round-trip.
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
