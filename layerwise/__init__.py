"""layerwise: record the hidden states of every decoder layer of a vision-language model."""

__version__ = "0.1.0"
