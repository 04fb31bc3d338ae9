"""The default sampler and each sampler's default number of steps.

Kept free of torch so that the command line's help and the app's settings, which must start
fast, name them from this one place."""

DEFAULT_SAMPLER = "dpm++sde"
DEFAULT_STEPS = {"dpm++sde": 12, "unipc": 15, "dpm++": 20, "ddim": 50, "ddpm": 1000}
