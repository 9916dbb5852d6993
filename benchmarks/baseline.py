"""What the two benchmark-only baselines, (b) and (d), share: their command line and key check.

Both must take the same arguments and refuse a request the same way as the workbench does, or
the comparison measures a difference in the contract rather than in the serving system.
"""

from __future__ import annotations

import argparse
import hmac


def parser(description: str) -> argparse.ArgumentParser:
    """The arguments every baseline takes; each adds its own."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--root", required=True, help="the workspace holding the experiment")
    parser.add_argument("--experiment", default="cartpole-dqn")
    parser.add_argument("--checkpoint", default="best", help="best, final or a step")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--key", required=True, help="the Bearer key a request must carry")
    return parser


def key_matches(authorization: str, key: bytes) -> bool:
    """Whether an Authorization header carries ``key`` as a Bearer token (constant-time)."""
    return authorization.startswith("Bearer ") and hmac.compare_digest(
        authorization[7:].encode(), key)
