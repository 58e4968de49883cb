"""The commands of ``converge``, one module per command.

Each module has ``register(commands)``, which adds the command's parser with
its options and help, and ``run(args, pm, console) -> int``, which does the
command and returns its exit code; a command that prints has its ``render``
functions beside them. :mod:`engine.commands.options` holds the argparse
pieces several commands share. :mod:`engine.cli` is only the parser: the
global options, the error handling and the table of these modules.

Nothing is imported here, so that importing one command loads only what it needs.
"""
