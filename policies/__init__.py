"""Policies: NCP wiring, LTC/CfC cells, perception CNN, baselines, checkpoints."""
