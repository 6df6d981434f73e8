"""Subcommands of the `saferule` CLI; each command module exposes `register(subparsers)` (modules
without one, such as `selector_args`, are helpers shared by commands and are not listed).

A command's handler receives the parsed args and returns an exit code. Handlers stay thin:
they parse, call saferule_core, print.
"""
