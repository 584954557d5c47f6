"""Fruits! image ingestion service: shared code for the streaming and batch jobs."""
