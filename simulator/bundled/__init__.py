"""Data shipped with moesim (device profiles, default trace, experiments); see resources.py."""
