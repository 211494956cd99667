"""prefetch policies: one file per policy, each registered with the PREFETCH registry in policies/base.py."""
