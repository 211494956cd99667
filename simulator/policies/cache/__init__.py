"""cache policies: one file per policy, each registered with the CACHE registry in policies/base.py."""
