"""kv policies: one file per policy, each registered with the KV registry in policies/base.py."""
