"""Training helpers that write experiments the runtimes serve (notebooks import them from
:mod:`agents_widget.agilerl_training`)."""
