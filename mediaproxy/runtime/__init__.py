"""What a MediaProxy process runs on: start-up and daemonising, logging, systemd, timers, the C
library and the heap."""
