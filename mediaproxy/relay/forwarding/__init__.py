"""Media forwarding backends: userspace (Twisted UDP) and kernel (conntrack)."""
