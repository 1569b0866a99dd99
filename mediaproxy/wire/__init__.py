"""Proxy, relay and management wire formats (pure parse/format code)."""
