"""The generated shapes segmentation set: format, mask semantics, determinism."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from batchlab.data import load_prepared
from batchlab.data.prepare import prepare_dataset
from batchlab.data.shapes import MIN_CONTRAST, _inside, generate_shapes, prepare_shapes


@pytest.fixture(scope="module")
def small():
    return generate_shapes(60, 20, size=24, seed=3)


def test_shapes_and_dtypes(small):
    assert small["x_train"].shape == (60, 3, 24, 24) and small["x_train"].dtype == np.uint8
    assert small["y_train"].shape == (60, 24, 24) and small["y_train"].dtype == np.int64
    assert small["x_test"].shape == (20, 3, 24, 24) and small["y_test"].shape == (20, 24, 24)


def test_every_class_appears_and_each_image_has_a_shape_and_background(small):
    y = small["y_train"]
    assert set(np.unique(y)) == {0, 1, 2, 3}
    for m in y:
        assert (m > 0).any() and (m == 0).any()
    frac = np.bincount(y.ravel(), minlength=4) / y.size
    assert 0.5 < frac[0] < 0.95 and (frac[1:] > 0.02).all()


def test_masked_pixels_carry_the_shape_not_the_background(small):
    # Within an image, shape pixels differ from the background by at least the contrast, up to noise.
    x, y = small["x_train"].astype(float), small["y_train"]
    gaps = []
    for img, m in zip(x, y):
        bg = np.median(img[:, m == 0], axis=1)
        for k in np.unique(m[m > 0]):
            gaps.append(np.abs(np.median(img[:, m == k], axis=1) - bg).max())
    # Medians of a class may mix two shapes or sit on a gradient, so most, not all, clear the bar.
    assert np.mean(np.array(gaps) > MIN_CONTRAST / 2) > 0.9


def test_shape_geometry():
    c = np.arange(21) - 10.0
    v, u = np.meshgrid(c, c, indexing="ij")
    disc, square, tri = (_inside(k, u, v, 8.0, 0.0) for k in (1, 2, 3))
    assert disc.sum() == pytest.approx(np.pi * 64, rel=0.05)
    assert square.sum() == pytest.approx(2 * 64, rel=0.15)  # side r * sqrt(2)
    assert tri.sum() == pytest.approx(3 * np.sqrt(3) / 4 * 64, rel=0.15)
    assert disc[10, 10] and square[10, 10] and tri[10, 10]
    assert not square[10, 10 + 7] and disc[10, 10 + 7]  # the square's half-side is 5.66


def test_deterministic_in_the_seed_and_train_test_disjoint():
    a, b = generate_shapes(5, 5, size=16, seed=7), generate_shapes(5, 5, size=16, seed=7)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    c = generate_shapes(5, 5, size=16, seed=8)
    assert not np.array_equal(a["x_train"], c["x_train"])
    assert not np.array_equal(a["x_train"], a["x_test"])  # different streams, not the same draws
    # The train set does not depend on n_test (nor the first images on n_train).
    d = generate_shapes(8, 1, size=16, seed=7)
    np.testing.assert_array_equal(d["x_train"][:5], a["x_train"])
    np.testing.assert_array_equal(d["x_test"], a["x_test"][:1])


def test_prepared_file_reads_back(tmp_path, small):
    out = tmp_path / "shapes.npz"
    prepare_shapes(out, n_train=60, n_test=20, size=24, seed=3)
    with np.load(out) as z:
        np.testing.assert_array_equal(z["x_train"], small["x_train"])
        np.testing.assert_array_equal(z["y_test"], small["y_test"])
        meta = json.loads(str(z["meta"]))
    assert meta["task"] == "segmentation" and meta["num_classes"] == 4 and meta["augment"] == "none"
    ds = load_prepared(out)
    assert ds.task == "segmentation" and ds.input_shape == (3, 24, 24) and ds.x_train.dtype == torch.float32
    assert torch.equal(ds.y_train, torch.from_numpy(small["y_train"]))
    torch.testing.assert_close(ds.x_train.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="size must be at least 8"):
        generate_shapes(2, 2, size=4)
    with pytest.raises(ValueError, match="must be positive"):
        generate_shapes(0, 2)


def test_dispatcher_passes_the_config_options(tmp_path):
    prepare_dataset("shapes", tmp_path / "a.npz", {"n_train": 4, "n_test": 2, "size": 16, "seed": 5})
    d = generate_shapes(4, 2, size=16, seed=5)
    with np.load(tmp_path / "a.npz") as z:
        np.testing.assert_array_equal(z["x_train"], d["x_train"])
        np.testing.assert_array_equal(z["y_test"], d["y_test"])
