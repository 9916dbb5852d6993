# JupyterHub (6.x) with agents-workbench: see README, "Under JupyterHub".
#
#   jupyterhub -f jupyter-config/jupyterhub/jupyterhub_config.py
#
# What it sets up:
# * each user's server serves their own workspace, ~/agents-workbench (experiments, the agents
#   registry, keys and tokens), with the Agents notebook copied there and trusted on first
#   spawn and opened as the start page;
# * the URLs the panel and the API hand out are the hub's public ones;
# * idle servers are culled by jupyterhub-idle-culler; calls to Deployed agents count as use,
#   and AWB_HUB_AGENTS_KEEP_ALIVE=1 lets idle Deployed agents keep a server up as well;
# * inference calls to a user whose server is not running get the inference contract's JSON
#   503 ("the user's server is not running") instead of the hub's login page;
# * optionally a team workspace published as the Agents Voila app, a hub service.
#
# Settings you will want to change come from the environment (defaults in brackets); the
# authenticator and spawner are the hub's defaults (PAM, local processes as each user): set
# them as for any hub. tests/test_jupyterhub.py runs this file with a test overlay.
import os
import sys

c = get_config()  # noqa: F821 - provided by JupyterHub when it loads this file

env = os.environ.get
PYTHON = env("AWB_HUB_PYTHON", sys.executable)  # the environment with agents-workbench
BIN = os.path.dirname(PYTHON)

# -- where users reach the hub ------------------------------------------------------------------
c.JupyterHub.bind_url = env("AWB_HUB_BIND_URL", "http://:8000")
if env("AWB_HUB_PUBLIC_URL"):
    # e.g. https://hub.example.org/ behind a TLS front end. JupyterHub passes it to every
    # server as $JUPYTERHUB_PUBLIC_URL, which the workbench uses for endpoints, snippets and
    # ARENA_BASE_URL. Without it the workbench uses the host the browser (or client) used,
    # with the first X-Forwarded-Proto from the proxy (AgentsWorkbenchApp.trusted_proxies).
    c.JupyterHub.public_url = env("AWB_HUB_PUBLIC_URL")
HUB_BASE = c.JupyterHub.base_url if "base_url" in c.JupyterHub else "/"

# -- each user's server -------------------------------------------------------------------------
c.Spawner.notebook_dir = "~/agents-workbench"  # also the workspace (the default root_dir)
c.Spawner.default_url = "/lab/tree/notebooks/Agents.ipynb"
c.Spawner.args = [
    "--AgentsWorkbenchApp.provision_notebooks=True",
    f"--AgentsWorkbenchApp.deployed_keeps_alive={env('AWB_HUB_AGENTS_KEEP_ALIVE') == '1'}",
]
c.Spawner.environment = {
    # How often each server reports its last activity to the hub (jupyterhub-singleuser).
    "JUPYTERHUB_ACTIVITY_INTERVAL": env("AWB_HUB_ACTIVITY_INTERVAL", "300"),
}
# How often the hub reads the proxy's per-route activity (traffic through the proxy).
c.JupyterHub.last_activity_interval = int(env("AWB_HUB_ACTIVITY_INTERVAL", "300"))

# -- services -----------------------------------------------------------------------------------
STOPPED_PORT = int(env("AWB_HUB_STOPPED_PORT", "10102"))
services = [
    {   # Stops servers idle for AWB_HUB_CULL_TIMEOUT seconds (jupyterhub-idle-culler).
        "name": "idle-culler",
        "command": [PYTHON, "-m", "jupyterhub_idle_culler",
                    f"--timeout={env('AWB_HUB_CULL_TIMEOUT', '3600')}",
                    f"--cull-every={env('AWB_HUB_CULL_EVERY', '300')}"],
    },
    {   # JSON for inference paths of users whose server is not running (hub_stopped.py).
        "name": "agents-stopped",
        "url": f"http://127.0.0.1:{STOPPED_PORT}",
        "command": [PYTHON, "-m", "server_extension.hosts.hub_stopped"],
    },
]
roles = [{
    "name": "idle-culler",
    "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
    "services": ["idle-culler"],
}]
# The proxy picks the longest matching prefix: a running server's /user/<name>/ route wins,
# and only a user whose server is not running falls through to this one.
c.Proxy.extra_routes = {f"{HUB_BASE}user/": f"http://127.0.0.1:{STOPPED_PORT}"}

APP_ROOT = env("AWB_HUB_APP_ROOT")
if APP_ROOT:
    # A team workspace published as the Agents Voila app at <hub>/services/agents-app/,
    # guarded by its own token (AWB_HUB_APP_TOKEN): open it as .../agents-app/?token=<token>.
    APP_PORT = int(env("AWB_HUB_APP_PORT", "10103"))
    services.append({
        "name": "agents-app",
        "url": f"http://127.0.0.1:{APP_PORT}",
        "command": [os.path.join(BIN, "agents-workbench"), "app", "--root", APP_ROOT,
                    "--port", str(APP_PORT), "--base-url", f"{HUB_BASE}services/agents-app/",
                    "--no-browser"],
        "environment": {"AGENTS_WORKBENCH_APP_TOKEN": env("AWB_HUB_APP_TOKEN", "")},
        "oauth_no_confirm": True,
    })
c.JupyterHub.services = services
c.JupyterHub.load_roles = roles
