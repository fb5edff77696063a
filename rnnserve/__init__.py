"""The `rnnserve` command: one CLI over export, service, client and bench."""
