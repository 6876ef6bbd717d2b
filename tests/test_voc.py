"""prepare_voc on a tiny Pascal VOC 2012 folder written in the release's layout.

VOCdevkit/VOC2012/JPEGImages/<id>.jpg (RGB JPEG), SegmentationClass/<id>.png (a palette,
"P" mode, PNG whose pixel values are class ids 0..20, with 255 on object boundaries) and
ImageSets/Segmentation/{train,val}.txt (one id a line); written by
`batchlab.data.fake_release.write_voc_release`, with the devkit's colour map as palette.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from batchlab.data import IGNORE_INDEX, load_prepared
from batchlab.data.fake_release import write_voc_release
from batchlab.data.prepare import prepare_dataset
from batchlab.data.voc import mask_labels, prepare_voc

W, H = 40, 30  # original size, not square
SIZE = 16


def _write_voc(root: Path, train: list[str], val: list[str]) -> dict[str, int]:
    """Image k: left half its class (red), right half background (blue), a 255 boundary between."""
    examples, classes = {}, {}
    for k, name in enumerate(train + val):
        cls = k % 20 + 1
        img = np.zeros((H, W, 3), dtype=np.uint8)
        img[:, : W // 2] = (200, 30, 30)
        img[:, W // 2 :] = (30, 30, 200)
        mask = np.zeros((H, W), dtype=np.uint8)
        mask[:, : W // 2 - 2] = cls
        mask[:, W // 2 - 2 : W // 2 + 2] = 255
        examples[name] = (img, mask)
        classes[name] = cls
    write_voc_release(root, examples, train, val, quality=95)
    return classes


TRAIN = ["2007_000032", "2007_000039", "2008_000123"]
VAL = ["2007_000033", "2011_003255"]


def test_voc_images_masks_and_splits(tmp_path):
    classes = _write_voc(tmp_path, TRAIN, VAL)
    out = tmp_path / "voc.npz"
    prepare_voc(tmp_path, out, size=SIZE)
    with np.load(out) as z:
        x_train, y_train, x_test, y_test = z["x_train"], z["y_train"], z["x_test"], z["y_test"]
        meta = json.loads(str(z["meta"]))
    assert x_train.dtype == np.uint8 and x_train.shape == (3, 3, SIZE, SIZE)
    assert y_train.dtype == np.int64 and y_train.shape == (3, SIZE, SIZE)
    assert x_test.shape == (2, 3, SIZE, SIZE) and y_test.shape == (2, SIZE, SIZE)
    assert meta == {**meta, "name": "voc", "num_classes": 21, "task": "segmentation", "augment": "none"}

    base = tmp_path / "VOCdevkit" / "VOC2012"
    for names, x, y in ((TRAIN, x_train, y_train), (VAL, x_test, y_test)):  # train.txt, then val.txt, in order
        for name, img, mask in zip(names, x, y):
            expected = Image.open(base / "JPEGImages" / f"{name}.jpg").convert("RGB").resize((SIZE, SIZE), Image.BILINEAR)
            np.testing.assert_array_equal(img, np.asarray(expected).transpose(2, 0, 1))
            assert set(np.unique(mask)) == {0, classes[name], IGNORE_INDEX}  # nearest: no blended classes
            assert (mask[:, :5] == classes[name]).all() and (mask[:, -5:] == 0).all()
            assert (mask[:, 7:9] == IGNORE_INDEX).any()
            assert abs(int(img[0, 0, 0]) - 200) < 12 and abs(int(img[2, 0, -1]) - 200) < 12  # red left, blue right

    ds = load_prepared(out)
    assert ds.task == "segmentation" and ds.input_shape == (3, SIZE, SIZE) and ds.num_classes == 21
    assert ds.y_train.dtype == torch.int64 and int((ds.y_train == IGNORE_INDEX).sum()) > 0
    torch.testing.assert_close(ds.x_train.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)


def test_mask_labels_maps_void_and_rejects_foreign_values():
    m = Image.fromarray(np.array([[0, 255], [20, 7]], dtype=np.uint8), mode="P")
    assert mask_labels(m).tolist() == [[0, IGNORE_INDEX], [20, 7]]
    with pytest.raises(ValueError, match=r"labels \[21, 100\]"):
        mask_labels(Image.fromarray(np.array([[21, 100]], dtype=np.uint8), mode="P"), "x.png")
    with pytest.raises(ValueError, match="palette"):
        mask_labels(Image.new("RGB", (2, 2)), "x.png")


def test_missing_release_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"VOCdevkit/VOC2012.*download: true.*trainval archive"):
        prepare_voc(tmp_path, tmp_path / "out.npz")
    _write_voc(tmp_path, TRAIN, VAL)
    (tmp_path / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"val\.txt") as err:
        prepare_voc(tmp_path, tmp_path / "out.npz")
    assert "JPEGImages," not in str(err.value)
    assert not (tmp_path / "out.npz").exists()
    with pytest.raises(ValueError, match="unknown VOC year '1999'"):
        prepare_voc(tmp_path, tmp_path / "out.npz", year="1999")


def test_dispatcher_passes_the_config_options(tmp_path):
    _write_voc(tmp_path, TRAIN[:1], VAL[:1])
    prepare_dataset("voc", tmp_path / "v.npz", {"root": str(tmp_path), "year": "2012", "size": 8, "download": False})
    ds = load_prepared(tmp_path / "v.npz")
    assert ds.input_shape == (3, 8, 8) and ds.y_test.shape == (1, 8, 8)
