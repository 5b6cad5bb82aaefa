"""hspace-sae: H-space sparse autoencoders for diffusion models."""

__version__ = "0.1.0"
