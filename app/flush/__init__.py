"""Closed windows out of Redis into PostgreSQL, exactly once; the scheduler; retention."""
