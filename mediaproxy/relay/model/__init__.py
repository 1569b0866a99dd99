"""The relay's calls as a pure model.

Nothing here opens a socket, schedules a call or logs: a transition changes the objects and
appends events (:mod:`.events`) to its session's ``outbox``, which the session manager drains
and carries out (kernel entries, sockets, ports, logs, the state file). Sockets are reached
only through ``side.endpoint.send`` of an object that provides ``plane.interfaces.IEndpoint``,
so that a packet forwarded in userspace costs no event at all.
"""
