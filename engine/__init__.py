"""Converge: compile compliance policies for OT data into per-device collection plans."""

from engine.hookspecs import hookimpl

__all__ = ["hookimpl"]
