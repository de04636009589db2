"""noisealign: test-time alignment of diffusion models by choosing or optimizing their noise."""

__version__ = "0.1.0"
