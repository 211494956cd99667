"""Mixed-precision policies: which stored copy of an expert a token's use needs."""
