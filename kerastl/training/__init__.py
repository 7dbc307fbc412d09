"""How a model trains: the trainer, optimizers, checkpoints, runtime, pruning, the lr range test.

Imports the layers below (core, config, data, models).
"""
