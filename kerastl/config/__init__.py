"""What a run is: the RunConfig schema, every closed choice once, and Phase.

Imports only kerastl.core.
"""
