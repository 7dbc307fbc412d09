"""build_model over the whole registry: modes, exact trainable counts, dtype, saving,
feature width, unfreezing blocks and every depth of the multi-depth probe.

Every test of the session-scoped ``registry_model`` fixture lives in this file: with
``--dist loadfile`` one worker then builds each of the 40 architectures once (about a
minute on two cores), where two files would have each worker build them all."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import kerastl
from kerastl.models.backbones import REGISTRY
from kerastl.models.build import preprocessing_layer
from kerastl.models.freezing import backbone_blocks

from .conftest import ALL_BACKBONES, is_batchnorm, test_size
from .numerics import PREPROCESSING, assert_close

# Saving writes every weight to disk (1.4 GB for ConvNeXtXLarge): the round trip runs
# on the smallest member of each family, which uses the same layer types.
FAMILY_REPRESENTATIVES = {
    "VGG16", "ResNet50", "ResNet50V2", "Xception", "InceptionV3", "InceptionResNetV2",
    "MobileNet", "MobileNetV2", "MobileNetV3Small", "DenseNet121", "NASNetMobile",
    "EfficientNetB0", "EfficientNetV2B0", "ConvNeXtTiny",
}


def _head_params(feature_width: int, hidden: int = 8, classes: int = 3) -> int:
    return feature_width * hidden + hidden + hidden * classes + classes


def _non_bn_params(layers) -> int:
    """Parameters of layers that learn: BatchNorm and Normalization hold statistics."""
    return sum(
        layer.count_params() for layer in layers
        if not is_batchnorm(layer) and not isinstance(layer, keras.layers.Normalization)
    )


def _statistics(layers) -> int:
    """BatchNorm moving statistics and Normalization mean/variance: never trained."""
    return sum(
        int(np.prod(w.shape))
        for layer in layers
        if is_batchnorm(layer) or isinstance(layer, keras.layers.Normalization)
        for w in layer.non_trainable_weights
    )


def test_every_mode_trains_exactly_the_expected_parameters(registry_model):
    name, model = registry_model
    base = model.get_layer("backbone")
    width = kerastl.get_backbone(name).feature_width
    head = _head_params(width)
    count = kerastl.models.freezing.count_params

    plan = kerastl.set_regime(model, "frozen")
    assert count(model.trainable_weights) == head == plan.trainable_params

    top = base.layers[-10:]
    plan = kerastl.set_regime(model, "finetune", unfreeze_top=10)
    assert count(model.trainable_weights) == head + _non_bn_params(top)
    assert all(not layer.trainable for layer in top if is_batchnorm(layer))

    plan = kerastl.set_regime(model, "finetune", unfreeze_blocks=1)
    last = kerastl.backbone_blocks(base, name)[-1]
    assert count(model.trainable_weights) == head + _non_bn_params(last.layers)
    assert plan.to_dict()["trainable_blocks"] == [last.name]

    kerastl.set_regime(model, "full")
    assert count(model.trainable_weights) == head + _non_bn_params(base.layers)

    kerastl.set_regime(model, "frozen")


def test_output_shape_and_float32_output(registry_model):
    name, model = registry_model
    size = test_size(name)
    out = model(np.zeros((2, size, size, 3), "float32"), training=False)
    assert tuple(out.shape) == (2, 3)
    assert model.get_layer("predictions").compute_dtype == "float32"


def test_save_and_safe_load_round_trip(registry_model, tmp_path):
    name, model = registry_model
    if name not in FAMILY_REPRESENTATIVES:
        pytest.skip(f"{name}: round trip covered by its family's smallest member")
    size = test_size(name)
    images = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype("float32")
    # Eager calls, not predict(): tracing and optimising a graph of NASNet's or
    # InceptionResNetV2's size for one batch took ~10x longer than running it.
    expected = np.asarray(model(images, training=False))
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    # Eager calls, not predict(): tracing a NASNet-sized graph for one batch costs ~10x
    # the call itself.
    np.testing.assert_allclose(np.asarray(loaded(images, training=False)), expected,
                               rtol=1e-5, atol=1e-6)
    # Outputs alone barely see the base: with random weights and BatchNorm in inference
    # mode many bases output ~1e-12, so every weight is compared too.
    saved = model.get_weights()
    assert len(loaded.get_weights()) == len(saved) > 0
    for a, b in zip(loaded.get_weights(), saved, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in loaded.layers)


@pytest.mark.parametrize("name", ["MobileNetV2", "ResNet50", "EfficientNetB0", "ConvNeXtTiny"])
def test_scratch_mode_trains_everything_with_fast_batchnorm(name):
    model = kerastl.build_model(name, 3, input_shape=32, weights=None, mode="scratch",
                                head="avg", dense_units=())
    base = model.get_layer("backbone")
    bns = [layer for layer in base.layers if is_batchnorm(layer)]
    assert bns or name == "ConvNeXtTiny"  # ConvNeXt normalises with LayerNorm only
    assert all(layer.trainable and layer.momentum == 0.9 for layer in bns)
    count = kerastl.models.freezing.count_params
    fixed = count(model.get_layer("preprocess").weights)  # ResNet's BGR convolution: 12
    assert count(model.trainable_weights) == count(model.weights) - _statistics(
        base.layers) - fixed


def test_vgg16_parameter_accounting_matches_the_documented_formula():
    classes = 7
    model = kerastl.build_model("VGG16", classes, input_shape=(224, 224, 3), weights=None)
    count = kerastl.models.freezing.count_params
    head = 25088 * 256 + 256 + 256 * classes + classes
    assert count(model.trainable_weights) == head
    kerastl.set_regime(model, "finetune", unfreeze_top=4)
    block5_convs = 3 * (3 * 3 * 512 * 512 + 512)
    assert count(model.trainable_weights) == head + block5_convs


@pytest.mark.parametrize(
    ("task", "classes", "units", "activation"),
    [("multiclass", 4, 4, "softmax"), ("binary", 2, 1, "sigmoid"),
     ("multilabel", 4, 4, "sigmoid")],
)
def test_tasks_set_output_units_and_activation(task, classes, units, activation):
    model = kerastl.build_model("MobileNetV2", classes, input_shape=32, weights=None,
                                task=task, dense_units=())
    layer = model.get_layer("predictions")
    assert layer.units == units and layer.activation.__name__ == activation


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "thawed"}, "mode must be one of"),
        ({"head": "gap"}, "head must be one of"),
        ({"input_shape": (16, 16, 3)}, "at least 32x32"),
        ({"input_shape": (32, 32, 1)}, r"\(height, width, 3\)"),
        ({"mode": "finetune"}, "unfreeze_top=N"),
        ({"unfreeze_top": 3}, "only applies to mode='finetune'"),
        ({"task": "binary"}, "num_classes of 1 or 2"),
        ({"bn_policy": "sometimes"}, "bn_policy must be one of"),
    ],
)
def test_bad_arguments_are_refused_with_the_received_value(kwargs, match):
    with pytest.raises(kerastl.ConfigError, match=match):
        kerastl.build_model("MobileNetV2", 3, input_shape=kwargs.pop("input_shape", 32),
                            weights=None, **kwargs)


def test_unknown_backbone_in_build_model():
    with pytest.raises(kerastl.UnknownBackboneError, match="MobileNetV2"):
        kerastl.build_model("MobileNetV5", 3, weights=None)


@pytest.mark.parametrize("name", ALL_BACKBONES)
def test_preprocessing_layer_equals_the_family_preprocess_input(name):
    entry = kerastl.get_backbone(name)
    images = np.random.default_rng(1).uniform(0, 255, (2, 5, 7, 3)).astype("float32")
    images[0, 0, 0] = (0.0, 127.5, 255.0)  # the edges and the zero of "tf" scaling
    layer = preprocessing_layer(name)
    inside = np.asarray(layer(images))
    expected = np.asarray(entry.preprocess_input(images.copy()))
    assert inside.dtype == np.float32 and layer.name == "preprocess"
    assert not layer.trainable_weights
    assert_close(inside, expected, PREPROCESSING)
    assert not isinstance(layer, keras.layers.Lambda)
    assert type(layer).__module__.startswith("keras.")  # a built-in, no custom class


def test_preprocessing_computes_in_float32_under_a_mixed_policy():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    model = kerastl.build_model("ResNet50", 2, input_shape=32, weights=None, dense_units=())
    assert model.get_layer("preprocess").compute_dtype == "float32"
    images = np.full((1, 32, 32, 3), 200.0, "float32")
    expected = keras.applications.resnet.preprocess_input(images.copy())
    assert_close(np.asarray(model.get_layer("preprocess")(images)), expected, PREPROCESSING)


def test_preprocessing_never_trains_whatever_the_regime():
    model = kerastl.build_model("VGG16", 2, input_shape=32, weights=None, dense_units=())
    for mode in ("full", "frozen"):
        kerastl.set_regime(model, mode)
        assert not model.get_layer("preprocess").trainable_weights


def test_backbone_is_found_from_the_model_name_and_a_renamed_model_is_refused():
    model = kerastl.build_model("EfficientNetV2B0", 2, input_shape=32, weights=None)
    assert kerastl.models.freezing.find_backbone(model)[1].name == "EfficientNetV2B0"
    model.name = "my_classifier"
    with pytest.raises(kerastl.ConfigError, match="'my_classifier'.*kerastl_<backbone>"):
        kerastl.set_regime(model, "full")


# Runs with -I in an empty directory and refuses every import of kerastl, so the
# editable install cannot sneak it in: the models must load with plain Keras.
PLAIN_KERAS_LOADER = textwrap.dedent(
    """
    import importlib.abc, sys

    class NoKerastl(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] == "kerastl":
                raise ImportError("kerastl is not installed here")

    sys.meta_path.insert(0, NoKerastl())
    try:
        import kerastl  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("kerastl was importable in the plain-Keras process")

    import keras
    import numpy as np

    images = np.load(sys.argv[1])
    outputs = {}
    for path in sys.argv[2:]:
        model = keras.models.load_model(path, safe_mode=True)
        outputs[path] = np.asarray(model(images, training=False))
    np.savez(sys.argv[1] + ".out.npz", **{str(i): v for i, v in enumerate(outputs.values())})
    """
)


def test_saved_models_load_with_plain_keras_without_kerastl(tmp_path):
    images = np.random.default_rng(2).uniform(0, 255, (3, 32, 32, 3)).astype("float32")
    models = [kerastl.build_model("MobileNetV2", 3, input_shape=32, weights=None,
                                  backbone_kwargs={"alpha": 0.35}, dense_units=(4,))]
    # Every preprocessing kind, on its own: a whole VGG or DenseNet file is large.
    for name in ("ResNet50", "DenseNet121", "Xception", "EfficientNetB0"):
        inputs = keras.Input((32, 32, 3))
        models.append(keras.Model(inputs, preprocessing_layer(name)(inputs)))
    paths, expected = [], []
    for index, model in enumerate(models):
        paths.append(str(tmp_path / f"m{index}.keras"))
        model.save(paths[-1])
        expected.append(np.asarray(model(images, training=False)))
    np.save(tmp_path / "images.npy", images)
    script = tmp_path / "load.py"
    script.write_text(PLAIN_KERAS_LOADER)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run([sys.executable, "-I", str(script), str(tmp_path / "images.npy"),
                           *paths], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(tmp_path / "images.npy.out.npz") as loaded:
        for index, want in enumerate(expected):
            assert np.array_equal(loaded[str(index)], want), paths[index]


def test_feature_width_and_min_size(registry_model):
    name, model = registry_model
    base = model.get_layer("backbone")
    assert base.output.shape[-1] == REGISTRY[name].feature_width
    assert REGISTRY[name].min_size <= REGISTRY[name].default_size


def _producers(layer):
    for node in layer._inbound_nodes:
        for tensor in keras.tree.flatten(node.input_tensors):
            yield tensor._keras_history.operation


def test_blocks_cover_the_base_and_never_split_a_branch(registry_model):
    name, model = registry_model
    base = model.get_layer("backbone")
    blocks = backbone_blocks(base, name)
    flat = [layer for block in blocks for layer in block.layers]
    assert [layer.name for layer in flat] == [layer.name for layer in base.layers]
    assert len(blocks) >= 5, [b.name for b in blocks]
    # Assign raw ops (e.g. `x + 3.0`) to the block of the layer before them.
    block_of, current = {}, 0
    layer_block = {id(layer): i for i, block in enumerate(blocks) for layer in block.layers}
    for op in base.operations:
        current = layer_block.get(id(op), current)
        block_of[id(op)] = current
    block_end = {block_of[id(op)]: id(op) for op in base.operations}
    max_crossing = REGISTRY[name].max_crossing
    crossing = {k: set() for k in range(1, len(blocks))}
    for op in base.operations:
        i = block_of[id(op)]
        for producer in _producers(op):
            j = block_of[id(producer)]
            assert j <= i, (op.name, producer.name)
            for boundary in range(j + 1, i + 1):
                crossing[boundary].add(id(producer))
            if j != i and max_crossing == 1:
                # A shortcut may only start at the end of an earlier block.
                assert block_end[j] == id(producer), (op.name, producer.name)
    assert all(len(c) <= max_crossing for c in crossing.values())


def test_multi_depth_probe_reads_every_family_at_several_depths(registry_model):
    from kerastl.models.multi_depth import MAX_DEPTHS, feature_groups, multi_depth_model

    name, model = registry_model
    base = model.get_layer("backbone")
    trainable = [layer.trainable for layer in base.layers]
    probe = multi_depth_model(model)
    try:
        groups = feature_groups(probe)
        depths = {group.split("/")[0] for group, _ in groups[1:]}
        assert groups[0][0] == "pixels"
        assert 3 <= len(depths) <= MAX_DEPTHS, groups
        assert groups[-1][1] == REGISTRY[name].feature_width  # the base's own output
        assert probe.output.shape == (None, 3)
    finally:
        for layer, flag in zip(base.layers, trainable, strict=True):
            layer.trainable = flag
