"""kittyterm: watch a diffusion model learn to draw cats, in your terminal."""

__version__ = "0.2.0"
