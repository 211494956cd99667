"""moesim."""
