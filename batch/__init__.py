"""Periodic batch jobs over the accumulated features (PCA refit)."""
