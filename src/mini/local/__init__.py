"""The local backend: calls run on this machine, in threads or worker processes."""
