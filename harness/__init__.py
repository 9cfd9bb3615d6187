"""Comparative benchmarking harness for LLM customization strategies."""

__version__ = "0.1.0"
