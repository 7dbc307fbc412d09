"""From a trained run to a deployable file: SavedModel, LiteRT, ONNX.

Imports the layers below (core to recipes).
"""
