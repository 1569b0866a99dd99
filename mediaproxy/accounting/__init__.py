"""Accounting of ended calls: a durable spool and the SQL and RADIUS backends behind it."""
