"""Placing files into the landing folder: drop, stage, writers' heartbeats."""
