"""The package version, in one place below every layer (the learner records it in each watermark file)."""

__version__ = "0.1.0"
