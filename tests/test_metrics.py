import math

import pytest
import torch
import torch.nn.functional as F

from batchlab.data import IGNORE_INDEX, Dataset
from batchlab.metrics import cross_entropy, member_confusion, member_losses, member_sums, mean_iou, perplexity
from batchlab.train.evaluation import evaluate


def _dense_case(seed=0, k=3, b=4, c=5, positions=(6, 7), ignore_share=0.2):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(k, b, c, *positions, generator=g, dtype=torch.float64)
    targets = torch.randint(c, (k, b, *positions), generator=g)
    targets[torch.rand(targets.shape, generator=g) < ignore_share] = IGNORE_INDEX
    return logits, targets


def test_member_losses_average_the_targets_that_count_per_member():
    logits, targets = _dense_case()
    losses = member_losses(logits, targets)
    for k in range(3):
        keep = targets[k] != IGNORE_INDEX
        per_pixel = F.cross_entropy(logits[k], targets[k].clamp_min(0), reduction="none")
        assert losses[k].item() == pytest.approx(per_pixel[keep].mean().item(), rel=1e-12)
        # torch's own mean with ignore_index is the same definition
        assert losses[k].item() == pytest.approx(F.cross_entropy(logits[k], targets[k]).item(), rel=1e-12)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_cross_entropy_of_class_innermost_logits_is_torchs_over_dim_1(reduction):
    """The language model's (N, V, T) logits, a transposed view of (N, T, V), take the fast path:
    the same numbers as torch's cross-entropy over dim 1, with IGNORE_INDEX counting nowhere."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 7, 50, generator=g, dtype=torch.float64).transpose(1, 2)  # (N, V, T), V innermost
    targets = torch.randint(50, (4, 7), generator=g)
    targets[0, :3] = IGNORE_INDEX
    assert logits.stride(1) == 1
    expected = F.cross_entropy(logits.contiguous(), targets, reduction=reduction)
    got = cross_entropy(logits, targets, reduction)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    dense = logits.contiguous()  # classes not innermost: torch's own path
    torch.testing.assert_close(cross_entropy(dense, targets, reduction), expected, rtol=0, atol=0)


def test_member_losses_of_labels_are_the_plain_mean():
    g = torch.Generator().manual_seed(1)
    logits, labels = torch.randn(2, 8, 10, generator=g), torch.randint(10, (2, 8), generator=g)
    expected = torch.stack([F.cross_entropy(logits[k], labels[k]) for k in range(2)])
    assert torch.equal(member_losses(logits, labels), F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none").view(2, 8).mean(1))
    torch.testing.assert_close(member_losses(logits, labels), expected)


def test_member_sums_count_correct_predictions_and_targets():
    logits, targets = _dense_case(seed=2)
    loss, correct, count = member_sums(logits, targets)
    for k in range(3):
        keep = targets[k] != IGNORE_INDEX
        assert count[k].item() == keep.sum().item()
        assert correct[k].item() == ((logits[k].argmax(1) == targets[k]) & keep).sum().item()
        assert loss[k].item() == pytest.approx(F.cross_entropy(logits[k], targets[k], reduction="sum").item(), rel=1e-12)


def test_mean_iou_matches_a_hand_computed_confusion():
    # one member, 3 classes; predictions from one-hot logits
    targets = torch.tensor([[[0, 0, 1, 1, 2, IGNORE_INDEX]]])  # (K=1, B=1, 6 positions)
    predicted = torch.tensor([[[0, 1, 1, 1, 0, 2]]])
    logits = F.one_hot(predicted, 3).permute(0, 1, 3, 2).double()  # (1, 1, 3, 6)
    confusion = member_confusion(logits, targets, 3)
    assert confusion[0].tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    # IoU: class 0: 1 / (2 + 2 - 1) = 1/3; class 1: 2 / (2 + 3 - 2) = 2/3; class 2: 0 / (1 + 0 - 0) = 0
    assert mean_iou(confusion)[0].item() == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)


def test_mean_iou_leaves_out_classes_absent_from_targets_and_predictions():
    targets = torch.tensor([[[0, 0, 1]]])
    logits = F.one_hot(torch.tensor([[[0, 0, 1]]]), 4).permute(0, 1, 3, 2).double()
    assert mean_iou(member_confusion(logits, targets, 4))[0].item() == 1.0  # classes 2 and 3 never occur


def test_member_confusion_keeps_members_apart():
    logits, targets = _dense_case(seed=3, c=4)
    confusion = member_confusion(logits, targets, 4)
    for k in range(3):
        keep = targets[k] != IGNORE_INDEX
        alone = member_confusion(logits[k : k + 1], targets[k : k + 1], 4)[0]
        assert torch.equal(confusion[k], alone) and alone.sum().item() == keep.sum().item()


def test_perplexity_is_exp_of_the_loss_per_token():
    assert perplexity(math.log(100.0)) == pytest.approx(100.0)
    assert perplexity(1e4) == math.inf


class _PixelModel(torch.nn.Module):
    """A 1x1 convolution: logits (B, C, H, W) per pixel."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 1).double()

    def forward(self, x):
        return self.conv(x)


def test_evaluate_averages_over_labelled_pixels_not_images():
    torch.manual_seed(0)
    model = _PixelModel()
    x = torch.randn(10, 3, 5, 5, dtype=torch.float64)
    y = torch.randint(4, (10, 5, 5))
    y[:5, :3] = IGNORE_INDEX
    loss, acc = evaluate(model, x, y, batch_size=3)
    logits = model(x)
    assert loss == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-12)
    keep = y != IGNORE_INDEX
    assert acc == pytest.approx(((logits.argmax(1) == y) & keep).sum().item() / keep.sum().item())


def _dataset(n=40):
    x = torch.arange(n, dtype=torch.float32).view(n, 1)
    return Dataset("toy", x, torch.arange(n), x[:5], torch.arange(5), num_classes=n)


def test_train_fraction_keeps_nested_fixed_subsets_and_the_whole_test_split():
    data = _dataset()
    half, quarter = data.train_fraction(0.5), data.train_fraction(0.25)
    assert (half.n_train, quarter.n_train) == (20, 10)
    assert set(quarter.y_train.tolist()) <= set(half.y_train.tolist())
    assert torch.equal(half.x_train[:, 0].long(), half.y_train)  # inputs stay with their labels
    assert torch.equal(data.train_fraction(0.5).y_train, half.y_train)  # the same examples every time
    assert torch.equal(half.x_test, data.x_test)
    assert data.train_fraction(1.0) is data
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        data.train_fraction(0.0)


def test_token_data_trains_in_the_default_float_dtype():
    tokens = torch.zeros(4, 6, dtype=torch.int64)
    data = Dataset("text", tokens, tokens, tokens, tokens, num_classes=7, task="language_model")
    assert data.dtype == torch.get_default_dtype() and _dataset().dtype == torch.float32
