import pytest
import torch

from batchlab.models import (
    BN_MODELS, INPUT_KINDS, MODEL_INPUTS, MODEL_NAMES, RESNETS, build_model, has_batchnorm, parameter_count,
    uses_batchnorm,
)
from batchlab.models.drn import DRN_D_22_CHANNELS, DRNSeg


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


# ---------------------------------------------------------------------------------------
# Every model: inputs by kind, the output convention (class on dim 1), BatchNorm flags.

# Per kind: (input shape, a batch of inputs, the logits' shape for 10 classes).
KIND_EXAMPLES = {
    "signal": ((40,), lambda: torch.randn(3, 40), (3, 10)),
    "image": ((3, 32, 32), lambda: torch.randn(3, 3, 32, 32), (3, 10)),
    "segmentation": ((3, 32, 32), lambda: torch.randn(3, 3, 32, 32), (3, 10, 32, 32)),
    "tokens": ((7,), lambda: torch.randint(10, (3, 7)), (3, 10, 7)),
}


def test_model_inputs_cover_every_model_with_a_known_kind():
    assert set(MODEL_INPUTS) == set(MODEL_NAMES)
    assert set(MODEL_INPUTS.values()) == set(INPUT_KINDS)
    assert MODEL_INPUTS["drn"] == "segmentation" and MODEL_INPUTS["lstm_lm"] == "tokens"
    assert {n for n, kind in MODEL_INPUTS.items() if kind == "signal"} == {"mlp", "cnn", "gru"}
    assert {n for n, kind in MODEL_INPUTS.items() if kind == "image"} == {*RESNETS, "keskar_f1", "keskar_c1"}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_logits_put_the_class_on_dim_1_so_cross_entropy_applies(name):
    input_shape, inputs, logits_shape = KIND_EXAMPLES[MODEL_INPUTS[name]]
    if name == "keskar_f1":  # MNIST images
        input_shape, inputs = (1, 28, 28), lambda: torch.randn(3, 1, 28, 28)
    out = build_model(name, input_shape, 10)(inputs())
    assert out.shape == logits_shape
    targets = torch.randint(10, (out.shape[0], *out.shape[2:]))
    assert torch.nn.functional.cross_entropy(out, targets).isfinite()


def test_new_models_keep_names_and_depths():
    assert {n: RESNETS[n] for n in ("resnet8", "resnet8_bn", "resnet20", "resnet32", "resnet20_nobn", "resnet32_nobn")} == {
        "resnet8": (8, False), "resnet8_bn": (8, True), "resnet20": (20, True), "resnet32": (32, True),
        "resnet20_nobn": (20, False), "resnet32_nobn": (32, False),
    }
    for name, (depth, bn) in RESNETS.items():
        model = build_model(name, (3, 32, 32), 10)
        convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
        assert len(convs) + 1 == depth  # 3x3 convs + the linear head
        assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == bn


def test_batchnorm_flags_and_errors():
    assert BN_MODELS == ("resnet8_bn", "resnet20", "resnet32")
    assert [n for n in MODEL_NAMES if uses_batchnorm(n)] == [*BN_MODELS, "keskar_f1", "keskar_c1", "drn"]
    for name in MODEL_NAMES:
        has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                     for m in build_model(name, KIND_EXAMPLES[MODEL_INPUTS[name]][0], 10).modules())
        assert has_bn == uses_batchnorm(name), name
    for name in ("keskar_f1", "keskar_c1", "drn"):
        with pytest.raises(ValueError, match=f"model '{name}' has plain BatchNorm without ghost batches, "
                                             "so bn_batch_size=8 is not supported; only resnet8_bn, resnet20, resnet32"):
            build_model(name, (3, 32, 32), 10, bn_batch_size=8)
    for name in ("resnet20_nobn", "lstm_lm"):
        with pytest.raises(ValueError, match="has no BatchNorm"):
            build_model(name, KIND_EXAMPLES[MODEL_INPUTS[name]][0], 10, bn_batch_size=8)
    ghost = build_model("resnet20", (3, 32, 32), 10, bn_batch_size=8)
    assert all(m.ghost_batch_size == 8 for m in ghost.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_input_shape_errors_name_the_expected_input():
    with pytest.raises(ValueError, match=r"takes \(T,\) sequences of token ids"):
        build_model("lstm_lm", (3, 32, 32), 100)
    with pytest.raises(ValueError, match=r"takes \(C, H, W\) images"):
        build_model("drn", (40,), 4)
    with pytest.raises(ValueError, match=r"takes \(C, H, W\) images"):
        build_model("keskar_f1", (784,), 10)


def test_lstm_follows_the_word_language_model_defaults():
    model = build_model("lstm_lm", (35,), 5000)
    assert model.encoder.weight.shape == (5000, 200)
    lstm = model.lstm
    assert (lstm.input_size, lstm.hidden_size, lstm.num_layers, lstm.dropout) == (200, 200, 2, 0.0)
    assert model.decoder.weight.shape == (5000, 200)
    assert model.decoder.weight.data_ptr() != model.encoder.weight.data_ptr()  # untied
    assert model.encoder.weight.abs().max() <= 0.1 and (model.decoder.bias == 0).all()
    assert parameter_count("lstm_lm", (35,), 33278) == 13_987_678


def test_drn_has_output_stride_8_dilations_and_degridding():
    model = build_model("drn", (3, 64, 64), 21)
    h = torch.randn(2, 3, 64, 64)
    sizes = []
    for stage in model.stages():
        h = stage(h)
        sizes.append(h.shape[-1])
    assert sizes == [64, 64, 32, 16, 8, 8, 8, 8, 8]  # output stride 8, no downsampling after layer4
    dilations = [[m.dilation[0] for m in stage.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
                 for stage in model.stages()]
    assert dilations[5] == [2, 2, 2, 2] and dilations[6] == [4, 4, 4, 4] and dilations[7] == [2] and dilations[8] == [1]
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    assert parameter_count("drn", (3, 64, 64), 21) == 550_597
    assert sum(p.numel() for p in DRNSeg(21, channels=DRN_D_22_CHANNELS).parameters()) == 15_891_525


def test_keskar_networks_have_the_published_sizes():
    f1 = build_model("keskar_f1", (1, 28, 28), 10)
    assert [m.out_features for m in f1.modules() if isinstance(m, torch.nn.Linear)] == [512] * 5 + [10]
    assert f1.hidden[0].in_features == 784
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in f1.modules()) == 5
    c1 = build_model("keskar_c1", (3, 32, 32), 10)
    convs = [m for m in c1.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size) for c in convs] == [(64, (5, 5))] * 2
    assert [m.out_features for m in c1.modules() if isinstance(m, torch.nn.Linear)] == [384, 192, 10]
    assert c1.hidden[0].in_features == 64 * 8 * 8  # 32 -> 16 -> 8 through the two 'same' max-pools
    assert not any(isinstance(m, torch.nn.Dropout) for m in [*f1.modules(), *c1.modules()])
    assert parameter_count("keskar_c1", (3, 32, 32), 10) == 1_757_834
    assert parameter_count("keskar_f1", (1, 28, 28), 10) == 1_462_794
