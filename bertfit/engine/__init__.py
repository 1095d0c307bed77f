"""The engine layer: devices and processes, the training loop, the run log, checkpoints, and the one evaluation path
that training, `eval`, `predict` and serving share."""
