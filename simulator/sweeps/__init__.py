"""YAML experiment sweeps: ``moesim sweep EXPERIMENT.yaml`` (see :mod:`.spec` for the file
format, :mod:`.runner` for executors and resume, :mod:`.table` for the results table)."""
