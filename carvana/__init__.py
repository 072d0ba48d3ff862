"""carvana: the winning pipelines of Kaggle's Carvana Image Masking Challenge, on Lightning + Hydra."""

__version__ = "0.1.0"
