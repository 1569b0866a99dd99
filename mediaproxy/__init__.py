"""MediaProxy: far-end NAT traversal media relay for SIP (dispatcher and media relays)."""

__version__ = "5.0.0"
