"""Tools around the system, not part of it: ``demo``, ``bench --end-to-end`` / ``--scaling``,
``eval-recall`` (with its plot and its corpus readers), the bundled sample corpus and queries, and the
command lines of ``search`` and of versions.

May import anything in :mod:`pipeline` and :mod:`workers`; nothing outside this package imports it but
the CLI, which dispatches to it lazily (the command-line modules import nothing heavy until a verb runs).
"""
