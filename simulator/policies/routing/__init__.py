"""routing policies: one file per policy, each registered with the ROUTING registry in policies/base.py."""
