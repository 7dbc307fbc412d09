"""The model: backbone registry, weights, build, freezing, features, heads, Grad-CAM.

Imports kerastl.core, config and data.
"""
