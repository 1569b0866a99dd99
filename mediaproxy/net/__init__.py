"""The network edges every program shares: guarded listeners and refusals, TLS and certificates,
line and HTTP protocols, UNIX sockets."""
