"""What a run leaves: reports, the report page, interpretation, inference, the network check.

Imports the layers below (core to training).
"""
