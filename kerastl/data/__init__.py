"""Images in: folders, tables, decoding, datasets, the shipped samples, the doctor.

Imports kerastl.core and kerastl.config.schema.
"""
