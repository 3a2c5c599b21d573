"""recwatch: serve and watch e-commerce ranking and recommendation models."""

__all__ = ["__version__"]

__version__ = "0.1.0"
