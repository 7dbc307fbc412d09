"""The command line: flags, and one entry per command.

Imports every layer below.
"""
