"""The layer under both the server and the panel: what a workspace holds on disk.

The experiment format (:mod:`.store`: folders of checkpoints and metrics, the writer and the
reader), the marks of runs still training (:mod:`.training_marks`), experiment logging
(:mod:`.tracking`, which notebooks import as :mod:`agents_widget.tracking`), the
environments experiments train on and the episode player (:mod:`.environments`,
:mod:`.episodes`), and how a kernel finds its server (:mod:`.discovery`). It imports neither
``server_extension`` nor ``agents_widget``; tests/test_layout.py keeps it so.
"""
