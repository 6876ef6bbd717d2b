"""crop_flip against an explicit per-image numpy reference, plus reproducibility and dispatch."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from batchlab.data import AUGMENTATIONS as PREPARED_AUGMENTATIONS
from batchlab.data.augment import AUGMENTATIONS, apply_augment, crop_flip


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _reference(x: np.ndarray, padding: int, dy: int, dx: int, flip: bool) -> np.ndarray:
    """Images (B, C, H, W) done the slow obvious way: zero-pad, crop at (dy, dx), maybe mirror."""
    _, _, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)), constant_values=0)
    crop = padded[:, :, dy : dy + h, dx : dx + w]
    return crop[..., ::-1] if flip else crop


def _identify(x: torch.Tensor, out: torch.Tensor, padding: int) -> list[tuple[int, int, bool]]:
    """For each image, the unique (dy, dx, flip) whose reference equals the output; fails if none."""
    candidates = list(itertools.product(range(2 * padding + 1), range(2 * padding + 1), (False, True)))
    xs, outs = x.numpy(), out.numpy()
    # matches[k, i]: output image i equals candidate k applied to input image i.
    matches = np.stack([(_reference(xs, padding, *cand) == outs).all(axis=(1, 2, 3)) for cand in candidates])
    per_image = matches.sum(axis=0)
    assert (per_image == 1).all(), f"images matching no crop/flip of their input, or several: {per_image.tolist()}"
    return [candidates[k] for k in matches.argmax(axis=0)]


def test_every_image_is_a_padded_crop_or_its_mirror():
    x = torch.rand(64, 3, 8, 8, generator=_gen(0)) + 0.5  # no zeros, so padding is visible
    out = crop_flip(x, _gen(1), padding=4)
    assert out.shape == x.shape and out.dtype == x.dtype
    params = _identify(x, out, padding=4)
    # Offsets and flips vary from image to image, not one draw for the whole batch.
    assert len({p[:2] for p in params}) > 20
    assert 0 < sum(p[2] for p in params) < len(params)


def test_full_size_cifar_batch_matches_reference():
    x = torch.rand(8, 3, 32, 32, generator=_gen(2)) + 0.5
    _identify(x, crop_flip(x, _gen(3)), padding=4)


def test_uint8_images_keep_dtype():
    x = torch.randint(1, 256, (16, 3, 8, 8), generator=_gen(4), dtype=torch.uint8)
    out = crop_flip(x, _gen(5), padding=2)
    assert out.dtype == torch.uint8
    _identify(x, out, padding=2)


def test_padding_zero_only_flips():
    x = torch.rand(32, 1, 4, 5, generator=_gen(6))
    out = crop_flip(x, _gen(7), padding=0)
    flipped = torch.tensor([torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x)])
    same = torch.tensor([torch.equal(o, xi) for o, xi in zip(out, x)])
    assert (flipped ^ same).all()
    assert 0 < flipped.sum() < len(x)


def test_flip_probability_half_and_offsets_uniform():
    n, p = 4000, 1
    x = torch.rand(n, 1, 4, 4, generator=_gen(18)) + 0.5
    out = crop_flip(x, _gen(8), padding=p)
    params = _identify(x, out, padding=p)
    flips = np.array([f for _, _, f in params])
    # Binomial(4000, 0.5) has sd 32, so 0.5 +- 0.05 is over 6 sd.
    assert abs(flips.mean() - 0.5) < 0.05
    counts = np.bincount([dy * 3 + dx for dy, dx, _ in params], minlength=9)
    assert counts.min() > 0.7 * n / 9 and counts.max() < 1.3 * n / 9


def test_same_seed_same_output_different_seed_different_output():
    x = torch.rand(16, 3, 32, 32, generator=_gen(9))
    a = crop_flip(x, _gen(10))
    b = crop_flip(x, _gen(10))
    c = crop_flip(x, _gen(11))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_generator_state_advances_between_calls():
    x = torch.rand(16, 3, 8, 8, generator=_gen(12))
    g = _gen(13)
    assert not torch.equal(crop_flip(x, g), crop_flip(x, g))


def test_input_is_not_modified():
    x = torch.rand(4, 3, 8, 8, generator=_gen(14))
    before = x.clone()
    crop_flip(x, _gen(15))
    assert torch.equal(x, before)


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        crop_flip(torch.zeros(3, 8, 8), _gen(0))
    with pytest.raises(ValueError, match="padding must be >= 0"):
        crop_flip(torch.zeros(1, 3, 8, 8), _gen(0), padding=-1)


def test_dispatch():
    x = torch.rand(4, 3, 8, 8, generator=_gen(16))
    assert apply_augment("none", x, _gen(0)) is x
    torch.testing.assert_close(apply_augment("crop_flip", x, _gen(17)), crop_flip(x, _gen(17)), rtol=0, atol=0)
    with pytest.raises(ValueError, match="unknown augmentation 'cutout'; choose one of none, crop_flip"):
        apply_augment("cutout", x, _gen(0))


def test_names_match_prepared_format():
    assert set(AUGMENTATIONS) == set(PREPARED_AUGMENTATIONS)
