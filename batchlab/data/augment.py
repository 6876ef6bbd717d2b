"""Batch augmentations on device tensors: the standard CIFAR crop-and-flip, airbench-style.

He et al. 2016 and Masters & Luschi 2018 train CIFAR ResNets with "4 pixels padded on each
side, a random 32x32 crop from the padded image or its horizontal flip". Here that is one
pure function over a whole batch (B, C, H, W), on the batch's own device, with no per-image
Python loop: every image's crop offsets and flip are drawn from the caller's
`torch.Generator`, then one gather builds the whole augmented batch. The same generator
state gives the same batch, so a run is reproducible from its seed.

`AUGMENTATIONS` maps the `augment` names of the prepared data format ("none",
"crop_flip") to functions `f(x, generator) -> x`; `apply_augment` dispatches by name.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

Augmentation = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def no_augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Return `x` itself (not a copy) and draw nothing from `generator`."""
    return x


def crop_flip(x: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Random crop from the zero-padded image, then a random horizontal flip, per image.

    Pads each side of every (C, H, W) image with `padding` zeros, crops an H x W window at
    an offset (dy, dx) drawn uniformly from {0, ..., 2 * padding} each, and mirrors it
    left-right with probability 0.5; offsets and flips are independent across images.
    The padding value is 0 in whatever space `x` is in: for images already normalised
    by `load_prepared` that is the per-channel mean colour, not black. `generator` must
    live on `x.device`. Returns a new tensor of `x`'s shape and dtype.
    """
    if x.dim() != 4:
        raise ValueError(f"crop_flip expects a batch (B, C, H, W), got shape {tuple(x.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    b, c, h, w = x.shape
    device = x.device
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=device)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=device)
    flip = torch.rand(b, generator=generator, device=device) < 0.5
    padded = F.pad(x, (padding, padding, padding, padding)) if padding else x  # (B, C, H+2p, W+2p)

    # Source row/column of every output pixel; a flip just reads the columns backwards.
    ar_h = torch.arange(h, device=device)
    ar_w = torch.arange(w, device=device)
    rows = dy[:, None] + ar_h  # (B, H)
    cols = dx[:, None] + torch.where(flip[:, None], w - 1 - ar_w, ar_w)  # (B, W)
    return padded[
        torch.arange(b, device=device)[:, None, None, None],
        torch.arange(c, device=device)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]  # (B, C, H, W)


AUGMENTATIONS: dict[str, Augmentation] = {"none": no_augment, "crop_flip": crop_flip}


def apply_augment(name: str, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Apply the augmentation called `name` ("none" or "crop_flip") to the batch `x`."""
    if name not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {name!r}; choose one of {', '.join(AUGMENTATIONS)}")
    return AUGMENTATIONS[name](x, generator)
