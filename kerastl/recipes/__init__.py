"""Whole runs: the plan of phases, fit, the pixel blend, the comparison of regimes.

Imports the layers below (core to outputs).
"""
