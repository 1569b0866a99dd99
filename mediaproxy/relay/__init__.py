"""The media relay.

- :mod:`~mediaproxy.relay.model`: what the relay knows of its calls, as plain objects (no sockets,
  no reactor, time from an injected clock): offer/answer, stream lifecycle, latching, expiry,
  statistics, serialization. Its transitions queue *events* for whoever drives it.
- :mod:`~mediaproxy.relay.plane`: the edges, each behind an interface in ``plane.interfaces``:
  UDP sockets, the port pool, the kernel forwarder (conntrack) and the host set-up.
- :mod:`~mediaproxy.relay.sessions`: the one place that holds both, feeds the model what the
  plane saw and carries out the model's events on the plane.
- :mod:`~mediaproxy.relay.link`, :mod:`~mediaproxy.relay.service`: the dispatcher links and the
  process's wiring.
"""
