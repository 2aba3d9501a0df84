"""Subcommands of the ``micromet`` command line, one module each with ``register(subparsers)``."""
