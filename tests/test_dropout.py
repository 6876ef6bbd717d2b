"""SeededDropout: each run's masks from its own (seed, calls) stream, alone or stacked.

Masks are compared bit for bit: a member of a stack must draw exactly the masks of its run
trained alone, whatever the other members and the layout of their examples.
"""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from batchlab.models import build_model
from batchlab.models.dropout import SeededDropout, apply_dropout, dropout_keep
from batchlab.stacked.layers import Members, StackedSeededDropout, swap_leaves
from batchlab.stacked.models import build_stacked_model

MASK32 = 0xFFFFFFFF


def lowbias32(x: int) -> int:
    """The 32-bit hash the module docstring names, in Python integers."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & MASK32
    x ^= x >> 15
    x = (x * 0x846CA68B) & MASK32
    return x ^ (x >> 16)


def _dropout(p: float, seed: int) -> SeededDropout:
    torch.manual_seed(seed)
    return SeededDropout(p)


def test_masks_follow_the_documented_hash_of_seed_calls_and_index():
    seed, calls, p = 123456789, 7, 0.3
    keep = dropout_keep(torch.tensor([seed, calls]), (4, 5), p)
    key = lowbias32(lowbias32(seed) ^ calls)
    assert keep.flatten().tolist() == [lowbias32(i ^ key) >= round(p * 2**32) for i in range(20)]
    x = torch.randn(4, 5, dtype=torch.float64)
    torch.testing.assert_close(apply_dropout(x, keep, p), torch.where(keep, x / (1 - p), 0.0))


def test_training_calls_draw_fresh_masks_and_advance_the_stream():
    drop = _dropout(0.5, seed=0)
    seed = drop.stream[0].item()
    assert drop.stream.tolist() == [seed, 0] and 0 <= seed < 2**32
    x = torch.ones(200, 50)
    first, second = drop(x), drop(x)
    assert drop.stream.tolist() == [seed, 2]
    for out in (first, second):
        assert set(out.unique().tolist()) == {0.0, 2.0}  # dropped, or kept and scaled by 1 / (1 - p)
        assert abs((out == 0).float().mean().item() - 0.5) < 0.02  # 10,000 draws: 4 standard deviations
    assert not torch.equal(first, second)
    assert abs(((first == 0) & (second == 0)).float().mean().item() - 0.25) < 0.02  # independent calls


def test_the_seed_is_drawn_from_the_global_rng_when_built():
    assert torch.equal(_dropout(0.5, seed=3).stream, _dropout(0.5, seed=3).stream)
    assert not torch.equal(_dropout(0.5, seed=3).stream, _dropout(0.5, seed=4).stream)
    torch.manual_seed(3)
    a, b = SeededDropout(0.5), SeededDropout(0.5)  # two layers of one model: two streams
    assert a.stream[0] != b.stream[0]
    state = torch.get_rng_state()
    with torch.device("meta"):  # how the stacked code builds reference modules: the global RNG untouched
        SeededDropout(0.5)
    assert torch.equal(torch.get_rng_state(), state)


def test_eval_mode_and_p_zero_are_the_identity_and_draw_nothing():
    drop, twin = _dropout(0.4, seed=1), _dropout(0.4, seed=1)
    x = torch.randn(8, 16)
    assert drop.eval()(x) is x and drop.stream[1] == 0
    assert torch.equal(drop.train()(x), twin(x))  # the eval call did not move the stream
    zero = SeededDropout(0.0)
    assert zero(x) is x and zero.stream[1] == 0
    with pytest.raises(ValueError, match=r"dropout must be a probability in \[0, 1\), got 1"):
        SeededDropout(1)


def test_masks_do_not_depend_on_the_device_generator_or_other_draws():
    drop, twin = _dropout(0.5, seed=2), _dropout(0.5, seed=2)
    x = torch.ones(4, 64)
    expected = twin(x)
    torch.manual_seed(99)
    torch.rand(1000)  # the global RNG moved on: no effect on the stream
    assert torch.equal(drop(x), expected)


def test_resume_from_a_saved_state_dict_continues_with_the_next_masks():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(6, 32), SeededDropout(0.5), nn.ReLU(), nn.Linear(32, 3))
    x = torch.randn(10, 6)
    for _ in range(3):
        model(x)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    expected = [model(x) for _ in range(2)]

    torch.manual_seed(6)  # another seed: the stream comes from the checkpoint
    resumed = nn.Sequential(nn.Linear(6, 32), SeededDropout(0.5), nn.ReLU(), nn.Linear(32, 3))
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer))
    assert resumed[1].stream[1] == 3
    assert all(torch.equal(resumed(x), out) for out in expected)


# ---------------------------------------------------------------------------------------
# Stacked: member k draws exactly the masks of run k alone.

def _stacked_leaf(drops: list[SeededDropout], interleaved: bool) -> StackedSeededDropout:
    streams = {"stream": torch.stack([d.stream for d in drops])}
    return swap_leaves(drops[0], streams, Members(len(drops), interleaved))


@pytest.mark.parametrize("interleaved", [True, False], ids=["interleaved", "member-major"])
@pytest.mark.parametrize("shape", [(5, 7), (3, 4, 6, 6)], ids=["2-D", "4-D"])
def test_a_stacked_member_draws_the_masks_of_its_run_alone(interleaved, shape):
    seeds = [11, 12, 13]
    plains = [_dropout(0.3, seed) for seed in seeds]
    leaf = _stacked_leaf([_dropout(0.3, seed) for seed in seeds], interleaved)
    assert isinstance(leaf, StackedSeededDropout) and leaf.stream.shape == (3, 2)
    members = Members(len(seeds), interleaved)
    x = torch.randn(len(seeds), *shape)
    for _ in range(3):
        out = members.split(leaf(members.merge(x)))  # (K, B, ...)
        for k, plain in enumerate(plains):
            assert torch.equal(out[k], plain(x[k])), k
        masks = [(out[k] == 0) for k in range(len(seeds))]
        assert not torch.equal(masks[0], masks[1]) and not torch.equal(masks[1], masks[2])
    assert leaf.stream[:, 1].tolist() == [3, 3, 3]
    assert torch.equal(leaf.stream, torch.stack([p.stream for p in plains]))


def test_a_member_alone_in_a_stack_draws_what_it_draws_among_others():
    """Its masks depend on neither the other members nor its place among them."""
    x = torch.randn(4, 9)
    many = _stacked_leaf([_dropout(0.5, s) for s in (1, 2, 3)], interleaved=True)
    alone = _stacked_leaf([_dropout(0.5, 3)], interleaved=True)
    reordered = _stacked_leaf([_dropout(0.5, s) for s in (3, 1)], interleaved=False)
    out_many = Members(3, True).split(many(Members(3, True).merge(x.expand(3, 4, 9))))
    out_reordered = Members(2, False).split(reordered(Members(2, False).merge(x.expand(2, 4, 9))))
    assert torch.equal(out_many[2], alone(x)) and torch.equal(out_reordered[0], out_many[2])


def test_a_stack_draws_in_train_mode_only_and_resumes_from_a_members_state():
    stacked = build_stacked_model("keskar_c1", (3, 8, 8), 10, [0, 1])
    streams = [key for key in stacked.buffers if key.endswith("stream")]
    assert streams == ["hidden.3.stream", "hidden.7.stream"]
    x = torch.randn(2, 4, 3, 8, 8)
    stacked.forward(x, train=False)
    assert all(stacked.buffers[key][:, 1].tolist() == [0, 0] for key in streams)
    stacked.forward(x, train=True)
    assert all(stacked.buffers[key][:, 1].tolist() == [1, 1] for key in streams)

    saved = stacked.member_state_dict(1)  # a checkpoint of run 1
    plain = build_model("keskar_c1", (3, 8, 8), 10)
    plain.load_state_dict(saved)
    resumed = build_stacked_model("keskar_c1", (3, 8, 8), 10, [5, 6])
    resumed.load_member(0, saved)
    expected = stacked.forward(x, train=True)[1]
    torch.testing.assert_close(plain.train()(x[1]), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(resumed.forward(x[[1, 0]], train=True)[0], expected, rtol=1e-5, atol=1e-6)
    assert resumed.buffers["hidden.3.stream"][0].tolist() == stacked.buffers["hidden.3.stream"][1].tolist()
