"""A faithful JAX/Flax NNX implementation of "Attention Is All You Need"."""
