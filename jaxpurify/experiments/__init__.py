"""Reproductions of the paper's experiments; each module is a ``jaxpurify reproduce`` subcommand."""
