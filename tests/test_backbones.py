"""The registry is the single source of truth about each backbone: check it.

The checks of a built model of every entry are in test_model.py (see its docstring)."""

from __future__ import annotations

import pytest

import kerastl
from kerastl.models.backbones import get_backbone

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
