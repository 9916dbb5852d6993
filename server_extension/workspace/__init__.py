"""The server's records in a workspace: agents and deployments (:mod:`.registry`), chat
sessions (:mod:`.sessions`), access tokens (:mod:`.tokens`), who is calling (:mod:`.callers`)
and the Arena projects mapped onto experiments (:mod:`.projects`). SQLite files beside the
experiments, shared by every server on the workspace."""
