"""The shipped defaults (fruits.toml), installed as package data ``fruits.conf``: read by :mod:`fruits.config`."""
