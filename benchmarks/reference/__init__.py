"""Minimal, obviously-correct PyTorch versions of the families' models: what a user would write
from the paper in an afternoon. ``benchmarks/throughput.py`` times a training step of each family
beside its reference here (same parameters, same batch); they are never imported by the
package."""
