"""Quantization models: AMAT bit slicing (:mod:`.amat`) and ``moesim amat`` (:mod:`.cli`)."""
