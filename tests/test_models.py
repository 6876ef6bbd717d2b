import inspect

import pytest
import torch

from batchlab.models import (
    BN_MODELS, INPUT_KINDS, MODEL_INPUTS, MODEL_NAMES, RESNETS, build_model, check_model_options, has_batchnorm,
    model_options, parameter_count, uses_batchnorm, uses_dropout,
)
from batchlab.models.drn import DRN_D_22_CHANNELS, DRNSeg
from batchlab.models.dropout import SeededDropout
from batchlab.models.keskar import KeskarC1, KeskarC2, KeskarF1
from batchlab.models.lstm import LSTMLanguageModel
from batchlab.models.resnet import cifar_resnet


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
    assert {n for n, kind in MODEL_INPUTS.items() if kind == "image"} == {
        *RESNETS, "alexnet_reduced", "keskar_f1", "keskar_c1", "keskar_c2", "keskar_c3", "keskar_c4", "alexnet",
        "vgg11_bn", "mobilenetv2"}


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
    assert [n for n in MODEL_NAMES if uses_batchnorm(n)] == [
        *BN_MODELS, "keskar_f1", "keskar_c1", "keskar_c3", "keskar_c2", "keskar_c4", "vgg11_bn", "mobilenetv2", "drn"]
    for name in MODEL_NAMES:
        has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                     for m in build_model(name, KIND_EXAMPLES[MODEL_INPUTS[name]][0], 10).modules())
        assert has_bn == uses_batchnorm(name), name
    for name in ("keskar_f1", "keskar_c1", "keskar_c4", "vgg11_bn", "mobilenetv2", "drn"):
        with pytest.raises(ValueError, match=f"model '{name}' has plain BatchNorm without ghost batches, "
                                             "so bn_batch_size=8 is not supported; only resnet8_bn, resnet20, resnet32"):
            build_model(name, (3, 32, 32), 10, bn_batch_size=8)
    for name in ("resnet20_nobn", "alexnet_reduced", "alexnet", "lstm_lm"):
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
    assert [type(m).__name__ for m in c1.hidden] == ["Linear", "BatchNorm1d", "ReLU", "SeededDropout"] * 2
    assert [m.p for m in c1.hidden if isinstance(m, SeededDropout)] == [0.5, 0.5]  # the authors' Dropout(0.5)
    assert not any(isinstance(m, (torch.nn.Dropout, SeededDropout)) for m in f1.modules())
    assert parameter_count("keskar_c1", (3, 32, 32), 10) == 1_757_834
    assert parameter_count("keskar_f1", (1, 28, 28), 10) == 1_462_794


def test_keskar_nets_have_keras_batchnorm_constants():
    """Keras's epsilon 1e-3 and moving-average momentum 0.99: a train step moves the running mean 1% of the way."""
    for name, shape in (("keskar_f1", (1, 28, 28)), ("keskar_c1", (3, 32, 32)), ("keskar_c2", (3, 32, 32))):
        model = build_model(name, shape, 10)
        norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        assert norms and all((m.eps, m.momentum) == (1e-3, 0.01) for m in norms), name
    first = build_model("keskar_c1", (3, 8, 8), 10).features[:2]  # conv, BN
    x = torch.randn(6, 3, 8, 8)
    first(x)
    conv_out = first[0](x).detach()
    torch.testing.assert_close(first[1].running_mean, 0.01 * conv_out.mean(dim=(0, 2, 3)))


# ---------------------------------------------------------------------------------------
# Options: named keyword arguments of the constructors, listed and checked without torch.

def test_model_options_list_the_constructors_keyword_defaults():
    constructors = {"resnet8": cifar_resnet, "resnet20_nobn": cifar_resnet, "resnet32_nobn": cifar_resnet,
                    "keskar_c1": KeskarC1, "keskar_c3": KeskarC1, "keskar_c2": KeskarC2, "keskar_c4": KeskarC2,
                    "lstm_lm": LSTMLanguageModel, "keskar_f1": KeskarF1}
    for name, constructor in constructors.items():
        signature = inspect.signature(constructor).parameters
        options = model_options(name)
        assert options and options == {key: signature[key].default for key in options}, name
    assert model_options("keskar_c2") == {"dropout": 0.5, "conv_dropout": 0.4, "first_conv_dropout": 0.3, "bn_momentum": 0.01}
    assert model_options("resnet8") == {"residual_init": "he"}
    assert model_options("lstm_lm") == {"dropout": 0.0}
    assert model_options("keskar_f1") == {"hidden": 512, "depth": 5, "bn_momentum": 0.01}
    for name in set(MODEL_NAMES) - set(constructors):
        assert model_options(name) == {}, name
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        model_options("vgg")


def test_unknown_or_invalid_options_are_refused_naming_the_allowed_ones():
    with pytest.raises(ValueError, match="model 'resnet20' has no option 'residual_init'; it takes no options"):
        build_model("resnet20", (3, 32, 32), 10, residual_init="zero")
    with pytest.raises(ValueError, match="model 'keskar_c2' has no option 'drop'; its options are dropout, "
                                         "conv_dropout, first_conv_dropout"):
        build_model("keskar_c2", (3, 32, 32), 10, drop=0.1)
    with pytest.raises(ValueError, match="model 'resnet8' option 'residual_init' must be one of he, zero, got 'xav"):
        check_model_options("resnet8", {"residual_init": "xavier"})
    for bad in (1.0, -0.1, True, "0.5", None):
        with pytest.raises(ValueError, match=r"model 'lstm_lm' option 'dropout' must be a probability in \[0, 1\)"):
            build_model("lstm_lm", (35,), 100, dropout=bad)
    check_model_options("keskar_c1", {"dropout": 0})  # an int 0 is a probability
    with pytest.raises(ValueError, match="has no option 'dropout'"):
        parameter_count("mlp", (40,), 10, dropout=0.1)


def test_options_reach_the_models():
    c2 = build_model("keskar_c2", (3, 32, 32), 10, dropout=0.2, conv_dropout=0.1, first_conv_dropout=0.0)
    rates = [m.p for m in c2.modules() if isinstance(m, SeededDropout)]
    assert rates == [0.0] + [0.1] * 7 + [0.2, 0.2]  # a dropout between the convs of each block: 1+1+2+2+2
    c1 = build_model("keskar_c3", (3, 32, 32), 100, dropout=0.25)
    assert [m.p for m in c1.modules() if isinstance(m, SeededDropout)] == [0.25, 0.25]
    zero = build_model("resnet32_nobn", (3, 32, 32), 10, residual_init="zero")
    assert all(torch.count_nonzero(block.conv2.weight) == 0 for stage in zero.stages for block in stage)
    assert parameter_count("lstm_lm", (35,), 100, dropout=0.2) == parameter_count("lstm_lm", (35,), 100)


def test_uses_dropout_follows_the_options():
    assert uses_dropout("keskar_c1") and uses_dropout("keskar_c4")
    assert not uses_dropout("keskar_c1", {"dropout": 0.0})
    assert uses_dropout("keskar_c2", {"dropout": 0.0})  # its conv dropout is still on
    assert not uses_dropout("keskar_c2", {"dropout": 0, "conv_dropout": 0, "first_conv_dropout": 0})
    assert not uses_dropout("lstm_lm") and uses_dropout("lstm_lm", {"dropout": 0.2})
    assert not any(uses_dropout(name) for name in ("mlp", "resnet8", "keskar_f1", "vgg11_bn", "mobilenetv2", "drn"))


def test_parameter_count_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    assert parameter_count("keskar_c2", (3, 32, 32), 10) > 0
    assert torch.equal(torch.get_rng_state(), state)


def test_the_lstm_with_dropout_has_a_layer_per_lstm_and_dropout_around_them():
    model = build_model("lstm_lm", (35,), 50, dropout=0.2)
    assert [type(m).__name__ for m in model.lstm] == ["LSTM", "LSTM"]
    assert all(m.num_layers == 1 and m.dropout == 0 for m in model.lstm)
    assert [m.p for m in model.dropouts] == [0.2, 0.2, 0.2]  # embedding output, after layer 1, after layer 2
    # The same function as one two-layer nn.LSTM in eval mode, with the same weights.
    fused = build_model("lstm_lm", (35,), 50)
    fused.lstm.load_state_dict({key.replace("_l0", f"_l{i}"): value for i, layer in enumerate(model.lstm)
                                for key, value in layer.state_dict().items()})
    fused.encoder.load_state_dict(model.encoder.state_dict())
    fused.decoder.load_state_dict(model.decoder.state_dict())
    tokens = torch.randint(50, (3, 35))
    torch.testing.assert_close(model.eval()(tokens), fused.eval()(tokens))
    assert not torch.allclose(model.train()(tokens), fused(tokens))  # dropout acts in training


def test_a_narrower_f1_is_an_option_checked_like_the_others():
    model = build_model("keskar_f1", (1, 28, 28), 10, hidden=128, depth=2)
    assert sum(p.numel() for p in model.parameters()) == (784 * 128 + 128 + 2 * 128) + (128 * 128 + 128 + 2 * 128) + (128 * 10 + 10)
    with pytest.raises(ValueError, match="option 'depth' must be a positive integer, got 0"):
        check_model_options("keskar_f1", {"depth": 0})
    model = build_model("keskar_c1", (3, 32, 32), 10, bn_momentum=0.1)
    assert {m.momentum for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)} == {0.1}
