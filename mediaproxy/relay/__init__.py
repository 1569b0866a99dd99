"""The media relay: sessions, ports, forwarding, dispatcher links."""
