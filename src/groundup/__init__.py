"""groundup: develop a language model from scratch, every stage in one package."""

__version__ = "0.1.0"
