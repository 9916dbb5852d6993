"""What runs the workbench: the Jupyter server extension (:mod:`.app`), the Voila app
(:mod:`.voila_app`) and the ``agents-workbench`` command (:mod:`.cli`)."""
