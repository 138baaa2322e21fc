"""Kept so that old ``import gapvision.extensions`` lines still work; it registers nothing. Every sub-command is
registered one way: the ``register(sub)`` of the modules in :data:`gapvision.cli.COMMAND_MODULES`."""
