"""Fashion-MNIST: the shared IDX reader on small files in the release's format, then the real
release that Debian's dataset-fashion-mnist installs, read by the loader and trained on through
the real snakemake.

IDX (LeCun's format): a big-endian header, the magic number 2051 then N, rows, cols for images
(uint8 pixels row by row), 2049 then N for labels; the releases and Debian gzip each file (.gz).
The small files are written by `batchlab.data.fake_release.write_idx_release`.
"""

from __future__ import annotations

import copy
import gzip
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from batchlab.config import build_grid, build_stacks, check_config
from batchlab.data import load_prepared
from batchlab.data import mnist as idx
from batchlab.data.catalog import dataset_info
from batchlab.data.fake_release import fake_images, write_idx_release
from batchlab.data.mnist import FASHION_MNIST_ROOT, RAW_FILES, prepare_mnist, read_idx
from batchlab.data.prepare import prepare_dataset
from tests.test_workflow import snakemake

DEBIAN_FILES = [Path(FASHION_MNIST_ROOT) / f"{base}.gz" for base in RAW_FILES]
# The first labels of the release, as its label files hold them (bytes 8.. of each, decompressed).
FIRST_TRAIN_LABELS = [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]  # ankle boot, T-shirt/top, T-shirt/top, dress, ...
FIRST_TEST_LABELS = [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
# Keskar's F1 on a tenth of the train set for 50 Adam steps: a short job, only the training (no analyses).
TINY_STUDY = {
    "dataset": "fashion_mnist", "models": ["keskar_f1"], "batch_sizes": [128], "train_fractions": [0.1],
    "lr_rules": ["constant"], "base_lrs": [0.001], "seeds": [0], "optimizer": {"name": "adam"},
    "budget": {"steps": 50}, "eval": {"regular_points": 2, "log_points": 0}, "checkpoints": {"log_points": 0},
    "analysis": {"enabled": False}, "interpolation": {"enabled": False},
}


def _write(folder: Path, n_train: int = 14, n_test: int = 6, compress: bool = True) -> dict[str, np.ndarray]:
    """Learnable images in the release's format in `folder`; returns what was written, with the channel axis."""
    d = fake_images("mnist", n_train, n_test)
    write_idx_release(folder, d["x_train"][:, 0], d["y_train"], d["x_test"][:, 0], d["y_test"], compress=compress)
    return d


def _output(result) -> str:
    return result.stdout + result.stderr


def _stack_ids(config: dict) -> list[str]:
    checked = check_config(copy.deepcopy(config))
    return list(build_stacks(checked, build_grid(checked)))


def _meta(path: Path) -> dict:
    with np.load(path) as z:
        return json.loads(str(z["meta"]))


# --- the reader, on small files -----------------------------------------------------------------


@pytest.mark.parametrize("layout, compress", [("debian", True), ("debian", False), ("torchvision", True), ("torchvision", False)])
def test_either_layout_plain_or_gzip_is_read_as_written(tmp_path, layout, compress):
    folder = tmp_path if layout == "debian" else tmp_path / "FashionMNIST" / "raw"
    written = _write(folder, compress=compress)
    prepare_dataset("fashion_mnist", tmp_path / "f.npz", {"root": str(tmp_path)})
    with np.load(tmp_path / "f.npz") as z:
        for key in ("x_train", "y_train", "x_test", "y_test"):
            np.testing.assert_array_equal(z[key], written[key])
        assert z["x_train"].dtype == np.uint8 and z["x_train"].shape == (14, 1, 28, 28)
    meta = _meta(tmp_path / "f.npz")
    x01 = written["x_train"] / 255.0
    assert (meta["name"], meta["num_classes"], meta["augment"], meta["normalize"]) == ("fashion_mnist", 10, "none", "standardize")
    assert meta["mean"] == pytest.approx([x01.mean()], rel=1e-12) and meta["std"] == pytest.approx([x01.std()], rel=1e-12)


def test_the_plain_file_is_preferred_and_gzip_is_told_by_its_bytes(tmp_path):
    written = _write(tmp_path, compress=True)
    plain = tmp_path / "t10k-labels-idx1-ubyte"
    plain.write_bytes(gzip.decompress((tmp_path / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not read")
    assert idx.find_release("fashion_mnist", tmp_path)["t10k-labels-idx1-ubyte"] == plain
    plain.write_bytes(gzip.compress(plain.read_bytes()))  # gzip under a plain name
    np.testing.assert_array_equal(read_idx(plain, idx.LABELS_MAGIC), written["y_test"])


def test_missing_files_are_named_with_both_layouts_and_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        prepare_dataset("fashion_mnist", tmp_path / "f.npz", {"root": str(tmp_path / "empty")})
    message = str(err.value)
    assert f"Fashion-MNIST files missing under {tmp_path / 'empty'}: " + ", ".join(RAW_FILES) in message
    assert f"directly in {tmp_path / 'empty'} or in {tmp_path / 'empty' / 'FashionMNIST' / 'raw'}" in message
    assert f"{FASHION_MNIST_ROOT} (`make datasets` installs it)" in message and "download: true" in message
    _write(tmp_path / "root")
    (tmp_path / "root" / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match=rf"missing in {tmp_path / 'root'}: train-labels-idx1-ubyte \(") as err:
        prepare_dataset("fashion_mnist", tmp_path / "f.npz", {"root": str(tmp_path / "root")})
    assert "images" not in str(err.value).split("(")[0]  # only the missing file is named
    assert not (tmp_path / "f.npz").exists()


def _truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def _decompressed(path: Path) -> bytes:
    return gzip.decompress(path.read_bytes())


DAMAGES = {
    "truncated gzip": ("train-images-idx3-ubyte.gz", lambda p: _truncate(p, 200),
                       r"train-images-idx3-ubyte.gz is a damaged gzip file"),
    "pixels cut": ("t10k-images-idx3-ubyte.gz", lambda p: p.write_bytes(gzip.compress(_decompressed(p)[:-5])),
                   r"t10k-images-idx3-ubyte.gz is a damaged IDX file: its header declares shape \(6, 28, 28\) "
                   r"\(4704 bytes of values\), but 4699 bytes follow"),
    "swapped": ("train-labels-idx1-ubyte.gz", lambda p: p.write_bytes((p.parent / "train-images-idx3-ubyte.gz").read_bytes()),
                r"train-labels-idx1-ubyte.gz is not an IDX label file: its magic number is 2051, expected 2049"),
    "header cut": ("t10k-labels-idx1-ubyte.gz", lambda p: p.write_bytes(gzip.compress(_decompressed(p)[:6])),
                   r"t10k-labels-idx1-ubyte.gz is a damaged IDX label file: its header ends after 6 bytes"),
    "count": ("t10k-labels-idx1-ubyte.gz", lambda p: p.write_bytes(gzip.compress(b"\0\0\x08\x01\0\0\0\x05" + bytes(5))),
              r"t10k-images-idx3-ubyte.gz holds 6 images but .*t10k-labels-idx1-ubyte.gz holds 5 labels"),
    "label": ("train-labels-idx1-ubyte.gz", lambda p: p.write_bytes(gzip.compress(_decompressed(p)[:-1] + b"\x0a")),
              r"train-labels-idx1-ubyte.gz holds label 10; the classes are 0..9"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_file_is_named(tmp_path, damage):
    name, damage_file, message = DAMAGES[damage]
    _write(tmp_path)
    damage_file(tmp_path / name)
    with pytest.raises(ValueError, match=message):
        prepare_mnist(tmp_path, tmp_path / "out" / "f.npz", name="fashion_mnist")
    assert not (tmp_path / "out" / "f.npz").exists()


def test_images_of_another_size_are_refused(tmp_path):
    rng = np.random.default_rng(0)
    write_idx_release(tmp_path, rng.integers(0, 256, (3, 27, 28)), [0, 1, 2], rng.integers(0, 256, (1, 28, 28)), [3])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte holds images of 27x28 pixels, expected 28x28"):
        prepare_mnist(tmp_path, tmp_path / "f.npz", name="fashion_mnist")


def test_the_switches_reach_the_prepared_file(tmp_path):
    written = _write(tmp_path / "root")
    options = {"root": str(tmp_path / "root"), "augment": "crop_flip", "normalize": "scale"}
    prepare_dataset("fashion_mnist", tmp_path / "f.npz", options)
    meta = _meta(tmp_path / "f.npz")
    assert (meta["augment"], meta["normalize"], meta["mean"], meta["std"]) == ("crop_flip", "scale", None, None)
    ds = load_prepared(tmp_path / "f.npz")
    assert ds.augment == "crop_flip"
    torch.testing.assert_close(ds.x_test, torch.from_numpy(written["x_test"]).float() / 255, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"normalize must be one of \('standardize', 'scale'\), got 'whiten'"):
        prepare_dataset("fashion_mnist", tmp_path / "g.npz", {**options, "normalize": "whiten"})


def test_download_fetches_only_when_neither_layout_holds_the_files(tmp_path, monkeypatch):
    fetched = []

    def fake_download(name: str, root: Path) -> None:  # torchvision's: the files into root/FashionMNIST/raw
        fetched.append(name)
        _write(root / "FashionMNIST" / "raw", n_train=11, compress=False)

    monkeypatch.setattr(idx, "_download", fake_download)
    _write(tmp_path / "debian", n_train=9)
    prepare_dataset("fashion_mnist", tmp_path / "a.npz", {"root": str(tmp_path / "debian"), "download": True})
    assert fetched == [] and load_prepared(tmp_path / "a.npz").n_train == 9
    prepare_dataset("fashion_mnist", tmp_path / "b.npz", {"root": str(tmp_path / "new"), "download": True})
    assert fetched == ["fashion_mnist"] and load_prepared(tmp_path / "b.npz").n_train == 11


@pytest.mark.workflow
def test_another_setting_prepares_the_data_set_again_and_retrains(tmp_path):
    """The rule's params carry the options: a config that changes augment or normalize re-prepares, and its runs
    train again (the options are part of each run's spec), while another root for the same files changes nothing."""
    _write(tmp_path / "fm", n_train=40, n_test=10)
    study = {**copy.deepcopy(TINY_STUDY), "batch_sizes": [8], "train_fractions": [1.0], "budget": {"steps": 5}}
    config = {"device": "cpu", "datasets": {"fashion_mnist": {"root": str(tmp_path / "fm")}}, "studies": {"fm": study}}
    data, [stack] = "results/data/fashion_mnist.npz", ["results/stacks/" + s + ".json" for s in _stack_ids(config)]
    assert snakemake(tmp_path, config, stack).returncode == 0
    assert (_meta(tmp_path / data)["augment"], _meta(tmp_path / data)["normalize"]) == ("none", "standardize")
    [run_json] = (tmp_path / "results").rglob("run.json")
    first = json.loads(run_json.read_text())
    config["datasets"]["fashion_mnist"].update(augment="crop_flip", normalize="scale")
    dry = snakemake(tmp_path, config, stack, "-n")
    assert "params have changed since last execution:\n        prepare_data" in _output(dry), _output(dry)[-2000:]
    assert snakemake(tmp_path, config, stack).returncode == 0
    meta = _meta(tmp_path / data)
    assert (meta["augment"], meta["normalize"], meta["mean"]) == ("crop_flip", "scale", None)
    second = json.loads(run_json.read_text())
    assert second["spec"]["data"] == {"augment": "crop_flip", "normalize": "scale"}
    assert second["final_train_loss"] != first["final_train_loss"]  # trained again, on the new data


# --- the real release, installed by Debian's dataset-fashion-mnist ------------------------------------


@pytest.fixture(scope="module")
def debian_release() -> Path:
    missing = [p for p in DEBIAN_FILES if not p.is_file()]
    if missing:
        pytest.skip(f"Debian's dataset-fashion-mnist is not installed: {missing[0]} missing; `make datasets` installs it")
    return Path(FASHION_MNIST_ROOT)


@pytest.fixture(scope="module")
def real_prepared(debian_release, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fashion") / "fashion_mnist.npz"
    prepare_dataset("fashion_mnist", out, {})  # the default root: Debian's
    return out


def test_the_real_release_has_its_published_sizes_classes_and_first_labels(debian_release, real_prepared):
    with np.load(real_prepared) as z:
        x_train, y_train, x_test, y_test = z["x_train"], z["y_train"], z["x_test"], z["y_test"]
    assert x_train.shape == (60000, 1, 28, 28) and x_test.shape == (10000, 1, 28, 28) and x_train.dtype == np.uint8
    assert Counter(y_train.tolist()) == {c: 6000 for c in range(10)}  # balanced, every class 0..9
    assert Counter(y_test.tolist()) == {c: 1000 for c in range(10)}
    # The files' own bytes, past the 8-byte label header and the 16-byte image header.
    train_labels = gzip.decompress((debian_release / "train-labels-idx1-ubyte.gz").read_bytes())
    test_labels = gzip.decompress((debian_release / "t10k-labels-idx1-ubyte.gz").read_bytes())
    assert list(train_labels[8:18]) == y_train[:10].tolist() == FIRST_TRAIN_LABELS
    assert list(test_labels[8:18]) == y_test[:10].tolist() == FIRST_TEST_LABELS
    with gzip.open(debian_release / "t10k-images-idx3-ubyte.gz") as fh:
        assert fh.read(16 + 784)[16:] == x_test[0].tobytes()
    meta = _meta(real_prepared)
    assert meta["mean"] == pytest.approx([0.2860], abs=5e-5) and meta["std"] == pytest.approx([0.3530], abs=5e-5)
    info = dataset_info("fashion_mnist", {})
    assert (info.n_train, info.n_test, info.source, info.root) == (60000, 10000, "measured", FASHION_MNIST_ROOT)


def test_the_real_release_loads_standardised(real_prepared):
    ds = load_prepared(real_prepared)
    assert ds.name == "fashion_mnist" and ds.num_classes == 10 and ds.augment == "none" and ds.input_shape == (1, 28, 28)
    assert abs(ds.x_train.mean().item()) < 1e-4 and ds.x_train.std().item() == pytest.approx(1.0, abs=1e-4)
    assert ds.y_train.dtype == torch.int64 and int(ds.y_test.min()) == 0 and int(ds.y_test.max()) == 9


@pytest.mark.workflow
def test_a_tiny_study_trains_on_the_real_release(debian_release, tmp_path):
    """Keskar's F1 on a tenth of the real train set, pixels / 255 as Keskar's code feeds them: well above chance."""
    config = {"device": "cpu", "datasets": {"fashion_mnist": {"normalize": "scale"}}, "studies": {"fm": copy.deepcopy(TINY_STUDY)}}
    result = snakemake(tmp_path, config, "results/stacks/fm/keskar_f1/bs128/frac0.1/stack0.json")
    assert result.returncode == 0, result.stderr[-3000:]
    meta = _meta(tmp_path / "results/data/fashion_mnist.npz")
    assert (meta["name"], meta["normalize"], meta["mean"]) == ("fashion_mnist", "scale", None)
    run = json.loads((tmp_path / "results/runs/fm/keskar_f1/bs128/frac0.1/constant/lr0.001/seed0/run.json").read_text())
    assert run["status"] == "completed" and run["steps"] == 50
    assert run["final_test_acc"] > 0.5, run["final_test_acc"]  # chance: 0.1
