"""Serving: from an agent in the registry to a model answering calls.

:mod:`.deployer` owns the lifecycle (Connect, load, probe, Disconnect) and hands each call to
the agent's runtime, in a supervised worker process (:mod:`.worker`) or on the server for
in-thread agents; :mod:`.runtimes` load checkpoints; :mod:`.serde` is the wire codec;
:mod:`.batching` and :mod:`.generate_batching` share forward passes; :mod:`.ray_backend`
serves agents on Ray instead; :mod:`.metrics` counts what was served; :mod:`.reconciler`
keeps several servers on one workspace in line.
"""
