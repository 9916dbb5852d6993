"""Bring your own checkpoint: detect, validate in a worker, write the experiment atomically.

``orchestrator.import_experiment`` is the one code path behind every door (the CLI's
``agents-workbench import``, ``POST agents/api/experiments``, the notebook's
``agents_widget.import_checkpoint`` and the panel's Import dialog, the last two through the
API). ``worker`` is the process that loads the user's files; ``spaces`` and ``scores`` are
its helpers.
"""
