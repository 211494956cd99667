"""warmup policies: one file per policy, each registered with the WARMUP registry in policies/base.py."""
