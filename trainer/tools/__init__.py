"""Adapter tools: merge into a base, resize the rank by SVD."""
