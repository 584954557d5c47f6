"""Fruits serve: the front door, the API, the dashboard, the page."""
