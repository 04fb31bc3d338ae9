"""kittyterm's diffusion engine: schedules, U-Net, samplers, trainer, checkpoints and data.

Pure PyTorch (plus numpy and pillow); it imports no UI code.
"""
