"""rayrec: Ray-based distributed training and serving for LLM-powered recommendation."""

__version__ = "0.1.0"
