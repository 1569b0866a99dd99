"""The relay's edges: UDP sockets, ports, kernel forwarding and the host set-up it needs.

Each provides an interface of :mod:`.interfaces`; none imports the model. What they learn
(a packet, an entry the kernel dropped) goes up through callables they were given.
"""
