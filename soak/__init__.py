"""The soak test of issue 15: tsproc nodes moving data while a fault loop kills, freezes,
crash-loops, starves and saturates their helpers; it proves, with figures, that nothing is lost
or corrupted silently and nothing leaks. Run it with ``make soak`` (``SOAK_MINUTES``, default 5)
or ``python -m soak --minutes M [--seed S]``; docs/reliability.md explains it and holds a
30-minute run's table."""
