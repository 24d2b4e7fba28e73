"""Alerts that leave the building: what is wrong (conditions.py), who is told how (channels.py),
and the thread in ``serve`` that raises, reminds and resolves (engine.py)."""
