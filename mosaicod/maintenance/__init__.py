"""Maintenance routines: store cleanup, store optimizer (and catalog rebuild)."""
