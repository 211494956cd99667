"""Fetch scheduling policies (which copy a miss reads, and the layer's issue order)."""
