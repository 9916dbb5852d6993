"""The demo workspace: what ``agents-workbench run`` trains on a first run (:mod:`.plan`), one
module per family, and the small data sets they learn from (:mod:`.data`). Product code never
imports this package; only the hosts (the command) and the tests do."""
