"""The registry is the single source of truth about each backbone: check it."""

from __future__ import annotations

import keras
import pytest

import kerastl
from kerastl.models.backbones import REGISTRY, get_backbone
from kerastl.models.freezing import backbone_blocks

REQUIRED = (
    ["VGG16", "VGG19", "ResNet50", "ResNet101", "ResNet152", "ResNet50V2", "ResNet101V2",
     "ResNet152V2", "Xception", "InceptionV3", "InceptionResNetV2", "MobileNet",
     "MobileNetV2", "MobileNetV3Small", "MobileNetV3Large", "DenseNet121", "DenseNet169",
     "DenseNet201", "NASNetMobile", "NASNetLarge"]
    + [f"EfficientNetB{i}" for i in range(8)]
    + [f"EfficientNetV2{v}" for v in ("B0", "B1", "B2", "B3", "S", "M", "L")]
    + [f"ConvNeXt{v}" for v in ("Tiny", "Small", "Base", "Large", "XLarge")]
)


def test_registry_covers_every_keras_applications_family():
    assert sorted(kerastl.list_backbones()) == sorted(REQUIRED)


def test_unknown_backbone_lists_closest_names():
    with pytest.raises(kerastl.UnknownBackboneError, match="ResNet50") as info:
        get_backbone("resnet5O")
    assert "resnet5O" in str(info.value)


def test_lookup_is_case_insensitive():
    assert get_backbone("mobilenet_v2").name == "MobileNetV2"


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
