"""Palisade node agent."""
