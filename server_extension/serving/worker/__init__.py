"""Worker processes: each local agent's runtime is loaded, probed and served in a child process
that the Jupyter server supervises (see ``docs/workers.md``).

- :mod:`.protocol`: the frames both sides exchange over one socket (JSON headers, raw bodies).
- :mod:`.serving`: what a request does to a runtime, shared by worker processes and in-thread
  serving (``isolation="thread"`` and the Ray backend).
- :mod:`.child`: the worker's own main loop (runs in the child).
- :mod:`.supervisor`: the server side: starting workers from a warm template, relaying calls,
  noticing deaths and reporting why.
"""
