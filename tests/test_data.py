import json

import numpy as np
import pytest
import torch
from mnist1d.data import get_dataset_args, make_dataset

from batchlab.data import load_prepared, save_prepared
from batchlab.data.fake_release import fake_images, write_fake_release
from batchlab.data.mnist1d import generate_mnist1d
from batchlab.data.prepare import prepare_dataset


@pytest.mark.slow  # several seconds: `make test`, not `make check`
def test_default_mnist1d_is_the_packages_default_split():
    ours = generate_mnist1d()
    ref = make_dataset(get_dataset_args())
    assert ours["x_train"].shape == (4000, 40) and ours["x_test"].shape == (1000, 40)
    np.testing.assert_allclose(ours["x_train"], ref["x"], rtol=1e-6)
    np.testing.assert_array_equal(ours["y_test"], ref["y_test"])


@pytest.mark.parametrize("n_train, n_test", [(256, 128), (13, 7)])
def test_sizes_are_exact_even_off_multiples_of_ten(n_train, n_test):
    d = generate_mnist1d(n_train, n_test)
    assert len(d["x_train"]) == len(d["y_train"]) == n_train
    assert len(d["x_test"]) == len(d["y_test"]) == n_test
    assert set(np.unique(d["y_train"])) <= set(range(10))


def test_generation_is_seeded():
    a, b, c = generate_mnist1d(100, 50, seed=1), generate_mnist1d(100, 50, seed=1), generate_mnist1d(100, 50, seed=2)
    np.testing.assert_array_equal(a["x_train"], b["x_train"])
    assert not np.array_equal(a["x_train"], c["x_train"])


def test_prepared_file_round_trips(tmp_path, tiny_data_path):
    data = load_prepared(tiny_data_path, "cpu")
    assert data.name == "mnist1d" and data.num_classes == 10 and data.augment == "none"
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    assert data.input_shape == (40,) and data.n_train == 256 and len(data.x_test) == 128
    expected = generate_mnist1d(256, 128)
    np.testing.assert_array_equal(data.x_test.numpy(), expected["x_test"])


def test_uint8_images_are_scaled_and_normalised(tmp_path):
    x = np.zeros((2, 3, 2, 2), dtype=np.uint8)
    x[:, 1] = 255
    save_prepared(tmp_path / "img.npz", x, [0, 1], x[:1], [1], name="img", num_classes=2, augment="crop_flip",
                  mean=[0.0, 0.5, 0.0], std=[1.0, 0.25, 2.0])
    data = load_prepared(tmp_path / "img.npz")
    assert data.augment == "crop_flip" and data.input_shape == (3, 2, 2)
    assert torch.all(data.x_train[:, 0] == 0) and torch.allclose(data.x_train[:, 1], torch.tensor(2.0))


def test_prepared_write_is_atomic_and_leaves_no_temporary(tmp_path):
    save_prepared(tmp_path / "d.npz", np.zeros((2, 3), np.float32), [0, 1], np.zeros((1, 3), np.float32), [0],
                  name="d", num_classes=2)
    assert [p.name for p in tmp_path.iterdir()] == ["d.npz"]


def test_bad_prepared_inputs_are_refused(tmp_path):
    with pytest.raises(ValueError, match="train: 2 inputs but 1 labels"):
        save_prepared(tmp_path / "d.npz", np.zeros((2, 3)), [0], np.zeros((1, 3)), [0], name="d", num_classes=2)
    with pytest.raises(ValueError, match="augment must be one of"):
        save_prepared(tmp_path / "d.npz", np.zeros((1, 3)), [0], np.zeros((1, 3)), [0], name="d", num_classes=2, augment="mixup")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_prepared(tmp_path / "missing.npz")


def test_prepare_dataset_dispatches_by_name(tmp_path):
    prepare_dataset("mnist1d", tmp_path / "m.npz", {"n_train": 30, "n_test": 10, "seed": 3})
    assert load_prepared(tmp_path / "m.npz").n_train == 30
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        prepare_dataset("imagenet", tmp_path / "i.npz", {})


def test_normalize_is_recorded_and_must_fit_the_statistics(tmp_path):
    x = np.zeros((2, 1, 2, 2), dtype=np.uint8)
    save_prepared(tmp_path / "s.npz", x, [0, 1], x, [0, 1], name="img", num_classes=2, normalize="scale")
    with np.load(tmp_path / "s.npz") as z:
        assert json.loads(str(z["meta"]))["normalize"] == "scale"
    with pytest.raises(ValueError, match=r"normalize must be one of \('standardize', 'scale'\), got 'whiten'"):
        save_prepared(tmp_path / "d.npz", x, [0, 1], x, [0, 1], name="img", num_classes=2, normalize="whiten")
    with pytest.raises(ValueError, match="normalize='standardize' goes with a mean and std"):
        save_prepared(tmp_path / "d.npz", x, [0, 1], x, [0, 1], name="img", num_classes=2, normalize="standardize")
    with pytest.raises(ValueError, match="normalize='scale' goes with no mean and std"):
        save_prepared(tmp_path / "d.npz", x, [0, 1], x, [0, 1], name="img", num_classes=2, normalize="scale", mean=[0.5], std=[1.0])


def _cifar_and_svhn(tmp_path) -> dict[str, dict]:
    return {name: write_fake_release(name, tmp_path / name, 20, 10) for name in ("cifar10", "svhn")}


def test_image_sets_keep_their_defaults(tmp_path):
    """CIFAR: crop and flip of standardised pixels (Masters & Luschi); SVHN: standardised, no augmentation."""
    for name, options in _cifar_and_svhn(tmp_path).items():
        prepare_dataset(name, tmp_path / f"{name}.npz", options)
        ds = load_prepared(tmp_path / f"{name}.npz")
        assert ds.augment == ("crop_flip" if name == "cifar10" else "none")
        torch.testing.assert_close(ds.x_train.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
        with np.load(tmp_path / f"{name}.npz") as z:
            assert json.loads(str(z["meta"]))["normalize"] == "standardize"


def test_keskar_pixels_on_cifar_and_crop_flip_on_svhn(tmp_path):
    """Keskar et al.'s code feeds CIFAR pixels / 255 with no augmentation; any image set can be augmented."""
    fake = {"cifar10": fake_images("cifar10", 20, 10), "svhn": fake_images("svhn", 20, 10)}
    switches = {"cifar10": {"augment": "none", "normalize": "scale"}, "svhn": {"augment": "crop_flip", "normalize": "scale"}}
    for name, options in _cifar_and_svhn(tmp_path).items():
        prepare_dataset(name, tmp_path / f"{name}.npz", {**options, **switches[name]})
        ds = load_prepared(tmp_path / f"{name}.npz")
        assert ds.augment == switches[name]["augment"]
        torch.testing.assert_close(ds.x_train, torch.from_numpy(fake[name]["x_train"]).float() / 255, rtol=0, atol=0)
        with np.load(tmp_path / f"{name}.npz") as z:
            meta = json.loads(str(z["meta"]))
        assert (meta["normalize"], meta["mean"], meta["std"]) == ("scale", None, None)
