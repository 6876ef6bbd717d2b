import pytest
import torch

from batchlab.models import MODEL_NAMES, build_model, has_batchnorm


@pytest.mark.parametrize("name, params", [("mlp", 40 * 100 + 100 + 100 * 100 + 100 + 100 * 10 + 10), ("cnn", None), ("gru", None)])
def test_mnist1d_models_map_signals_to_logits(name, params):
    model = build_model(name, (40,), 10)
    out = model(torch.randn(7, 40))
    assert out.shape == (7, 10)
    if params is not None:
        assert sum(p.numel() for p in model.parameters()) == params


def test_cnn_follows_the_mnist1d_paper_shape():
    model = build_model("cnn", (40,), 10)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv1d)]
    assert [c.out_channels for c in convs] == [25, 25, 25]
    assert model.head.in_features == 25 * 5  # length 40 halves three times -> 5


def test_gru_is_bidirectional_over_all_time_steps():
    model = build_model("gru", (40,), 10)
    assert model.gru.bidirectional and model.gru.hidden_size == 6
    assert model.head.in_features == 2 * 6 * 40


def test_registry_errors_are_explicit():
    with pytest.raises(ValueError, match="unknown model 'vgg'; choose one of mlp, cnn, gru"):
        build_model("vgg", (40,), 10)
    with pytest.raises(ValueError, match="has no BatchNorm"):
        build_model("mlp", (40,), 10, bn_batch_size=8)
    with pytest.raises(ValueError, match="takes 1-D signals"):
        build_model("cnn", (3, 32, 32), 10)


def test_batchnorm_flag_matches_the_models():
    assert [n for n in MODEL_NAMES if has_batchnorm(n)] == ["resnet8_bn", "resnet20", "resnet32"]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in build_model("resnet8", (3, 32, 32), 10).modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in build_model("resnet32", (3, 32, 32), 10).modules())
