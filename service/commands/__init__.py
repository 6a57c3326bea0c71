"""The operator commands of ``python -m service``, one module each.

Every module has ``NAME``, ``HELP`` (one line for the command list), ``DESCRIPTION``
(and optionally ``EPILOG``, examples), ``configure(parser)`` to add its arguments and
``run(args) -> int`` (the exit code). Modules import only the standard library and light
project modules at the top: heavy imports (runtimes, prometheus_client) happen in ``run``,
so ``--help`` is instant and ``run`` can prepare the metrics directory before
prometheus_client is first imported.
"""
