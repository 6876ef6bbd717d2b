"""Stacked leaf layers: K members' copies of one plain leaf (nn.Linear, nn.Conv2d, ...) as one module.

A stacked leaf holds each of the plain leaf's parameters and buffers as one (K, *plain_shape)
tensor under the same attribute name, so a plain module whose leaves are swapped for stacked
ones (`swap_leaves`) names its parameters and buffers as the plain state_dict does. Its
activations carry the K members' examples in the batch dimension, N = K*B rows, laid out as
`Members` says; every stacked leaf keeps each member's rows to that member's weights.

| plain leaf                        | stacked computation                                            |
|-----------------------------------|----------------------------------------------------------------|
| nn.Linear                         | batched matmul (baddbmm) over (K, B*..., in)                   |
| nn.Conv1d / Conv2d / Conv3d       | one convolution of (B, K*C, ...) with groups K*groups          |
| nn.BatchNorm1d / BatchNorm2d      | F.batch_norm over K*C channels of (B, K*C, ...): each member's |
| batchlab GhostBatchNorm2d         | own batch statistics; running statistics updated through flat |
|                                   | (K*C,) views of the (K, C) buffers                             |
| nn.Embedding                      | member k's rows looked up in its own (V, E) table              |
| nn.LSTM / nn.GRU                  | time-step loop of batched matmuls, or member by member through |
|                                   | the fused kernel (RECURRENT_MEMBER_LOOP)                        |
| batchlab SeededDropout            | member k's mask from its own (seed, calls) stream, stream[k]   |

Parameter-free modules (ReLU, pooling, Flatten, containers) need no stacked version: they never
mix the examples of a batch. Dropout is the exception among them: torch's nn.Dropout draws its
masks for all N rows from one global generator, so a member's masks would depend on the other
members; batchlab's SeededDropout keeps a stream per member. A leaf type outside this table, or
a configuration a stacked version refuses (`unsupported`), cannot be stacked;
`unstackable_leaves` lists them.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from batchlab.models.dropout import SeededDropout, apply_dropout, dropout_keep
from batchlab.models.resnet import GhostBatchNorm2d, ghost_batch_norm

# Per device type, the largest stack whose nn.LSTM / nn.GRU runs member by member through the fused
# kernel (torch.lstm / torch.gru on member k's weights: oneDNN on a CPU) rather than as one loop over
# time steps of batched matmuls over the members; None: any stack, 0: none. A train step (forward,
# cross-entropy, backward) on one thread, time-step loop -> member by member:
# - lstm_lm, vocabulary 10000, T = 35: batch 20, K = 1: 202 -> 156 ms (the plain nn.LSTM model 154),
#   K = 4: 1008 -> 877, K = 12: 2976 -> 2635; batch 64, K = 1: 754 -> 715 (plain 703), K = 4:
#   3010 -> 2861, K = 12: 9158 -> 8420;
# - gru (MNIST-1D, 40 steps, 6 units, both directions): batch 32, K = 1: 7.2 -> 6.3 ms (plain 6.2),
#   K = 4: 8.1 -> 29, K = 12: 17 -> 111; batch 128, K = 1: 8.9 -> 8.4 (plain 8.3), K = 4: 15 -> 36.
# On a GPU the loop over time steps is kept, unmeasured against cuDNN member by member.
RECURRENT_MEMBER_LOOP: dict[str, dict[str, int | None]] = {
    "cpu": {"lstm": None, "gru": 1},
    "cuda": {"lstm": 0, "gru": 0},
}


class Members:
    """Where K members' examples sit among the N = K*B rows of an activation's batch dimension.

    interleaved: row b*K + k is member k's example b, so (N, C, ...) is (B, K*C, ...) without a
    copy, member k owning channels [k*C, (k+1)*C): the layout of convolutions and BatchNorm.
    Otherwise member-major: row k*B + b, so (N, ...) is (K, B, ...) without a copy: the layout
    of batched matmuls.
    """

    def __init__(self, k: int, interleaved: bool) -> None:
        self.k = k
        self.interleaved = interleaved and k > 1  # the same layout at K = 1, member-major's in fewer view ops

    def split(self, x: Tensor, dim: int = 0) -> Tensor:
        """x with N rows on `dim` -> (K, *x.shape[:dim], B, *x.shape[dim+1:]), a view."""
        if dim == 0:  # the common case in as few view ops as can be: each is a node in the backward graph
            if self.interleaved:
                return x.view(-1, self.k, *x.shape[1:]).transpose(0, 1)
            return x.view(self.k, -1, *x.shape[1:])
        if self.interleaved:
            return x.unflatten(dim, (-1, self.k)).movedim(dim + 1, 0)
        return x.unflatten(dim, (self.k, -1)).movedim(dim, 0)

    def merge(self, y: Tensor, dim: int = 0) -> Tensor:
        """The inverse of `split`: (K, ..., B, ...) -> N rows on `dim` (a copy unless the layout allows a view)."""
        if dim == 0:
            if self.interleaved:
                return y.transpose(0, 1).reshape(-1, *y.shape[2:])
            return y.view(-1, *y.shape[2:]) if y.is_contiguous() else y.reshape(-1, *y.shape[2:])
        return y.movedim(0, dim + 1 if self.interleaved else dim).flatten(dim, dim + 1)

    def channels(self, x: Tensor) -> Tensor:
        """(N, C, ...) -> (B, K*C, ...), member k in channels [k*C, (k+1)*C)."""
        if self.k == 1:
            return x
        if self.interleaved:
            return x.view(-1, self.k * x.shape[1], *x.shape[2:])
        return self.split(x).transpose(0, 1).flatten(1, 2)

    def from_channels(self, y: Tensor) -> Tensor:
        """(B, K*C, ...) -> (N, C, ...)."""
        if self.k == 1:
            return y
        if self.interleaved:
            return y.view(-1, y.shape[1] // self.k, *y.shape[2:])
        return self.merge(y.unflatten(1, (self.k, -1)).transpose(0, 1))

    def of_rows(self, n: int, device: torch.device) -> Tensor:
        """(N,) the member of each row."""
        rows = torch.arange(n, device=device)
        return rows % self.k if self.interleaved else rows // (n // self.k)


class StackedLeaf(nn.Module):
    """The plain leaf's public settings, and its parameters and buffers as (K, ...) tensors under their names.

    A call is its `forward`, without nn.Module's hook dispatch (about 1 us a call): stacked leaves take no hooks.
    """

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def __init__(self, plain: nn.Module, tensors: dict[str, Tensor], members: Members) -> None:
        super().__init__()
        for key, value in vars(plain).items():
            if not key.startswith("_") and key != "training":
                setattr(self, key, value)
        for key, p in plain._parameters.items():
            self.register_parameter(key, None if p is None else nn.Parameter(tensors[key]))
        for key, b in plain._buffers.items():
            persistent = key not in plain._non_persistent_buffers_set
            self.register_buffer(key, None if b is None else tensors[key], persistent=persistent)
        self.members = members
        self.k = members.k

    @classmethod
    def unsupported(cls, plain: nn.Module) -> str | None:
        """Why this plain leaf's configuration cannot be stacked, or None."""
        return None


def _flat(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.flatten()


class StackedLinear(StackedLeaf):
    def forward(self, x: Tensor) -> Tensor:
        weight, bias, k = self.weight, self.bias, self.k
        if k == 1:  # a stack of one is the plain layer: one fused matmul, fewer view nodes to back-propagate
            return F.linear(x, weight.squeeze(0), None if bias is None else bias.squeeze(0))
        if x.dim() == 2 and not self.members.interleaved and bias is not None:  # the common case, in fewest ops
            out = torch.baddbmm(bias.unsqueeze(1), x.view(k, -1, x.shape[1]), weight.transpose(1, 2))
            return out.view(x.shape[0], -1)
        h = self.members.split(x)  # (K, B, ..., in)
        rows = h if h.dim() == 3 else h.reshape(k, -1, h.shape[-1])
        weight = weight.transpose(1, 2)
        out = torch.bmm(rows, weight) if bias is None else torch.baddbmm(bias.unsqueeze(1), rows, weight)
        return self.members.merge(out if rows is h else out.view(*h.shape[:-1], -1))


class StackedConv(StackedLeaf):
    CONV = {4: F.conv1d, 5: F.conv2d, 6: F.conv3d}  # by the stacked weight's dimensions

    @classmethod
    def unsupported(cls, plain: nn.Module) -> str | None:
        return None if plain.padding_mode == "zeros" else f"padding_mode={plain.padding_mode!r}"

    def forward(self, x: Tensor) -> Tensor:
        conv = self.CONV[self.weight.dim()]
        out = conv(self.members.channels(x), self.weight.flatten(0, 1), _flat(self.bias), self.stride, self.padding,
                   self.dilation, self.k * self.groups)
        return self.members.from_channels(out)


class StackedBatchNorm(StackedLeaf):
    """nn.BatchNorm1d / 2d, each member with its own batch statistics."""

    def forward(self, x: Tensor) -> Tensor:
        return self.members.from_channels(self._normalize(self.members.channels(x)))

    def _normalize(self, h: Tensor) -> Tensor:
        tracking = self.training and self.track_running_stats
        if tracking:
            self.num_batches_tracked.add_(1)
        weight, bias = _flat(self.weight), _flat(self.bias)
        if tracking and self.momentum is None:
            # A cumulative average: each member's factor is its own 1 / num_batches_tracked.
            out = F.batch_norm(h, None, None, weight, bias, True, 0.0, self.eps)
            dims = [0, *range(2, h.dim())]
            self._update_running_stats(h.detach().mean(dims), h.detach().var(dims, correction=1))
            return out
        batch_stats = self.training or self.running_mean is None
        stats = (_flat(self.running_mean), _flat(self.running_var)) if not self.training or tracking else (None, None)
        return F.batch_norm(h, *stats, weight, bias, batch_stats, self.momentum or 0.0, self.eps)

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, unbiased_var: Tensor) -> None:
        """GhostBatchNorm2d's rule: running = lerp(running, stat, factor), the stats (K*C,)."""
        factor = self.momentum
        if factor is None:
            factor = self.num_batches_tracked.to(self.running_mean.dtype).reciprocal().unsqueeze(1)
        self.running_mean.lerp_(mean.view_as(self.running_mean).to(self.running_mean.dtype), factor)
        self.running_var.lerp_(unbiased_var.view_as(self.running_var).to(self.running_var.dtype), factor)


class StackedGhostBatchNorm(StackedBatchNorm):
    """GhostBatchNorm2d: in training each member's sub-batches of ghost_batch_size examples."""

    def _normalize(self, h: Tensor) -> Tensor:
        if not self.training and self.running_mean is not None:
            return super()._normalize(h)
        out, mean, unbiased_var = ghost_batch_norm(h, _flat(self.weight), _flat(self.bias), self.ghost_batch_size,
                                                   self.eps)
        if self.training and self.running_mean is not None:
            self.num_batches_tracked.add_(1)
            self._update_running_stats(mean, unbiased_var)
        return out


class StackedEmbedding(StackedLeaf):
    @classmethod
    def unsupported(cls, plain: nn.Module) -> str | None:
        if plain.padding_idx is not None or plain.max_norm is not None or plain.scale_grad_by_freq or plain.sparse:
            return "padding_idx, max_norm, scale_grad_by_freq or sparse"
        return None

    def forward(self, ids: Tensor) -> Tensor:
        # Indexing the (K, V, E) table checks each id against V: an id out of a member's
        # vocabulary raises rather than reading another member's table.
        member = self.members.of_rows(ids.shape[0], ids.device).view(-1, *[1] * (ids.dim() - 1))
        return self.weight[member, ids]


class StackedRNN(StackedLeaf):
    """nn.LSTM / nn.GRU: any number of layers, one or both directions, batch_first or not."""

    @classmethod
    def unsupported(cls, plain: nn.Module) -> str | None:
        return "proj_size" if getattr(plain, "proj_size", 0) else None

    def __init__(self, plain: nn.Module, tensors: dict[str, Tensor], members: Members) -> None:
        super().__init__(plain, tensors, members)
        self.weight_names = list(plain._parameters)  # the fused kernel's order: per layer and direction ih, hh
        self.directions = 2 if self.bidirectional else 1

    def forward(self, x: Tensor, hx: Tensor | tuple[Tensor, ...] | None = None
                ) -> tuple[Tensor, Tensor | tuple[Tensor, ...]]:
        """As nn.LSTM / nn.GRU: (output, h_n) or (output, (h_n, c_n)), the batch in the layout of `members`."""
        if isinstance(x, PackedSequence):
            raise TypeError("a stacked RNN takes padded sequences, not a PackedSequence")
        batch_dim = 0 if self.batch_first else 1
        seq = self.members.split(x, batch_dim)  # (K, B, T, in), or (K, T, B, in)
        seq = seq if self.batch_first else seq.transpose(1, 2)
        k, b = seq.shape[:2]
        if hx is None:
            zeros = seq.new_zeros(k, self.num_layers * self.directions, b, self.hidden_size)
            state = (zeros,) * self.STATES
        else:  # (layers*directions, N, H) each -> (K, layers*directions, B, H)
            state = tuple(self.members.split(h, 1) for h in ((hx,) if torch.is_tensor(hx) else hx))
        most = RECURRENT_MEMBER_LOOP.get(seq.device.type, {}).get(self.KIND, 0)
        run = self._member_by_member if most is None or k <= most else self._time_steps
        out, final = run(seq, state)
        out = self.members.merge(out if self.batch_first else out.transpose(1, 2), batch_dim)
        final = tuple(self.members.merge(h, 1) for h in final)
        return out, final if len(final) > 1 else final[0]

    def _member_by_member(self, seq: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
        outs, finals = [], []
        dropout = float(self.dropout) if self.training else 0.0
        # unbind, not weight[k]: each member's slice would back-propagate into a zero tensor of the
        # whole (K, ...) weight, K times over (at K = 12, a tenth of an LSTM step); unbind's backward
        # stacks the K gradients once.
        weights = zip(*(getattr(self, name).unbind(0) for name in self.weight_names))
        for x, member_state, member_weights in zip(seq.unbind(0), zip(*(h.unbind(0) for h in state)), weights):
            out, *final = self._fused(x, list(member_state), list(member_weights), self.bias, self.num_layers, dropout,
                                      self.training, self.bidirectional, True)
            outs.append(out)
            finals.append(final)
        return torch.stack(outs), tuple(torch.stack(h) for h in zip(*finals))

    def _time_steps(self, seq: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
        k, b, length, _ = seq.shape
        finals = []
        for layer in range(self.num_layers):
            if layer and self.dropout and self.training:
                seq = F.dropout(seq, self.dropout, True)
            outputs = []
            for direction, suffix in enumerate(("", "_reverse")[: self.directions]):
                names = [f"{kind}_l{layer}{suffix}" for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
                w_ih, w_hh, b_ih, b_hh = (getattr(self, name, None) for name in names)
                index = layer * self.directions + direction
                # Input gates of all time steps at once; only the hidden path is sequential.
                b_in, b_hh = self._input_bias(b_ih, b_hh)
                rows = seq.reshape(k, b * length, -1)
                w_ih = w_ih.transpose(1, 2)
                gates = torch.bmm(rows, w_ih) if b_in is None else torch.baddbmm(b_in.unsqueeze(1), rows, w_ih)
                out, final = self._recurrence(gates.view(k, b, length, -1), w_hh, b_hh,
                                              tuple(h[:, index] for h in state), reverse=bool(direction))
                outputs.append(out)
                finals.append(final)
            seq = torch.cat(outputs, dim=-1) if len(outputs) > 1 else outputs[0]
        return seq, tuple(torch.stack(h, dim=1) for h in zip(*finals))

    def _recurrence(self, gates: Tensor, w_hh: Tensor, b_hh: Tensor | None, state: tuple[Tensor, ...], reverse: bool
                    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        """One layer and direction over (K, B, T, G) input gates -> (K, B, T, H) outputs, the last state."""
        w_hh_t = w_hh.transpose(1, 2)
        b_hh = None if b_hh is None else b_hh.unsqueeze(1)
        # unbind, not gates[:, :, t]: each slice's backward would fill a zero tensor of the whole
        # (K, B, T, G), quadratic in T; unbind's backward stacks the T gradients once.
        steps = gates.unbind(2)
        outputs: list[Tensor] = [None] * len(steps)
        for t in reversed(range(len(steps))) if reverse else range(len(steps)):
            state = self._cell(steps[t], state, w_hh_t, b_hh)
            outputs[t] = state[0]
        return torch.stack(outputs, dim=2), state


class StackedLSTM(StackedRNN):
    KIND, STATES = "lstm", 2
    _fused = staticmethod(torch.lstm)

    @staticmethod
    def _input_bias(b_ih: Tensor | None, b_hh: Tensor | None) -> tuple[Tensor | None, None]:
        return (None if b_ih is None else b_ih + b_hh), None  # both biases enter the input gates

    @staticmethod
    def _cell(x_gates: Tensor, state: tuple[Tensor, Tensor], w_hh_t: Tensor, b_hh: None) -> tuple[Tensor, Tensor]:
        """torch.nn.LSTM's step, gate rows ordered i, f, g, o."""
        h, c = state
        i, f, g, o = torch.baddbmm(x_gates, h, w_hh_t).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


class StackedGRU(StackedRNN):
    KIND, STATES = "gru", 1

    @staticmethod
    def _fused(x: Tensor, state: list[Tensor], *args) -> tuple[Tensor, Tensor]:
        return torch.gru(x, state[0], *args)

    @staticmethod
    def _input_bias(b_ih: Tensor | None, b_hh: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
        return b_ih, b_hh  # the hidden bias sits inside the reset gate's product

    @staticmethod
    def _cell(x_gates: Tensor, state: tuple[Tensor], w_hh_t: Tensor, b_hh: Tensor | None) -> tuple[Tensor]:
        """torch.nn.GRU's step, gate rows ordered r, z, n."""
        (h,) = state
        hidden = torch.bmm(h, w_hh_t) if b_hh is None else torch.baddbmm(b_hh, h, w_hh_t)
        i_r, i_z, i_n = x_gates.chunk(3, dim=-1)
        h_r, h_z, h_n = hidden.chunk(3, dim=-1)
        r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        return ((1 - z) * n + z * h,)


class StackedSeededDropout(StackedLeaf):
    """SeededDropout: `stream` (K, 2), member k's mask drawn exactly as member k alone draws it.

    The mask is computed per member on its (B, ...) examples, element indices counted within
    the member as in the plain module, then laid out as the activation's N rows."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        keep = dropout_keep(self.stream, (x.shape[0] // self.k, *x.shape[1:]), self.p)  # (K, B, ...)
        self.stream[:, 1].add_(1)
        return apply_dropout(x, self.members.merge(keep), self.p)


STACKED: dict[type[nn.Module], type[StackedLeaf]] = {
    nn.Linear: StackedLinear,
    nn.Conv1d: StackedConv,
    nn.Conv2d: StackedConv,
    nn.Conv3d: StackedConv,
    nn.BatchNorm1d: StackedBatchNorm,
    nn.BatchNorm2d: StackedBatchNorm,
    GhostBatchNorm2d: StackedGhostBatchNorm,
    nn.Embedding: StackedEmbedding,
    nn.LSTM: StackedLSTM,
    nn.GRU: StackedGRU,
    SeededDropout: StackedSeededDropout,
}
CHANNEL_LEAVES = (StackedConv, StackedBatchNorm)  # work on (B, K*C, ...): the interleaved layout's


def _leaves(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules that hold parameters or buffers of their own, and those with a stacked version
    (a BatchNorm without either still mixes the examples of its batch)."""
    return [(path, mod) for path, mod in module.named_modules()
            if type(mod) in STACKED or any(True for _ in mod.parameters(recurse=False))
            or any(True for _ in mod.buffers(recurse=False))]


def unstackable_leaves(module: nn.Module) -> list[str]:
    """'path (type): why' of every leaf of `module` that has no stacked version."""
    found = []
    for path, leaf in _leaves(module):
        stacked = STACKED.get(type(leaf))
        why = "no stacked version" if stacked is None else stacked.unsupported(leaf)
        if why is not None:
            found.append(f"{path or '<root>'} ({type(leaf).__name__}): {why}")
    return found


def has_leaf(module: nn.Module, kinds: tuple[type[StackedLeaf], ...]) -> bool:
    """Whether a leaf of `module` is stacked as one of `kinds`."""
    return any(issubclass(STACKED.get(type(leaf), StackedLeaf), kinds) for _, leaf in _leaves(module))


def swap_leaves(plain: nn.Module, stacked: dict[str, Tensor], members: Members) -> nn.Module:
    """A copy of `plain` whose leaves are stacked ones holding the (K, ...) tensors of `stacked`
    (plain state_dict name -> tensor), which become its parameters and buffers."""
    swapped = {}
    for path, leaf in _leaves(plain):
        prefix = f"{path}." if path else ""
        tensors = {key: stacked[prefix + key] for key in (*leaf._parameters, *leaf._buffers) if prefix + key in stacked}
        swapped[id(leaf)] = STACKED[type(leaf)](leaf, tensors, members)
    # deepcopy takes a stacked leaf wherever the memo names the plain one: only containers are copied.
    return copy.deepcopy(plain, memo=swapped)
