"""The ground floor: the TensorFlow backend pin, errors, atomic file writes, console output.

Imports nothing else of kerastl.
"""
