"""Subcommands of the `saferule` CLI; each module exposes `register(subparsers)`.

A command's handler receives the parsed args and returns an exit code. Handlers stay thin:
they parse, call saferule_core, print.
"""
