"""The decisions both front ends share, made once: which device, which model to sample from, how
a training run is opened or resumed (preset, batch, run name, lock, damaged checkpoints), and
where cats are written. `kittyterm.cli` and the app call these and only present the results.
"""
