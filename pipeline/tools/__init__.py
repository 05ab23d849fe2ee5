"""Tools around the system, not part of it: ``demo``, ``bench --end-to-end`` / ``--scaling``,
``eval-recall`` (with its plot and its corpus readers), and the bundled sample corpus and queries.

May import anything in :mod:`pipeline` and :mod:`workers`; nothing outside this package imports it
(the CLI dispatches to it lazily).
"""
