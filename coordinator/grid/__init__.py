"""The zone's network: a model of the feeder (model.py, pandapower), the
power-flow check of each cleared interval (check.py), the integer limits
the clearing respects (limits.py, pure; computed by sensitivity.py) and
the network-aware matching walk (walk.py, pure). docs/GRID.md explains.

Nothing here is imported by the rest of the coordinator unless a network
model is configured: pandapower takes seconds to import, so only model.py,
check.py and sensitivity.py import it, inside their functions.
"""
