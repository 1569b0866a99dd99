"""mediaproxy-demo: a dispatcher, a relay and a call on loopback (``run``), placed through
Kamailio and sipp when they are installed (``sip``)."""
