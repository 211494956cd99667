"""placement policies: one file per policy, each registered with the PLACEMENT registry in policies/base.py."""
