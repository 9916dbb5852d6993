"""What checking a deployment key against the shared registry costs per inference request.

Two connections to one registry file stand for two servers on one workspace. The reading one
looks a key up the way ``InferenceHandler.authenticate`` does (``Registry.credentials``):
a cached hit costs one ``PRAGMA data_version``; after the other connection writes, the next
lookup re-reads the row.

    python -m benchmarks.credential_check --lookups 20000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from server_extension.workspace.registry import AgentRecord, Registry


def measure(lookups: int = 20_000) -> dict[str, float]:
    """Microseconds per lookup: cached, and re-read after another connection's write."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "registry.sqlite3"
        writer, reader = Registry(path), Registry(path)
        writer.create_agent(AgentRecord(name="a", tab="classic", experiment="e",
                                        checkpoint_rule="best", checkpoint_step=1, algo="DQN"))
        writer.ensure_deployment("a")
        reader.credentials.get("a")
        started = time.perf_counter()
        for _ in range(lookups):
            reader.credentials.get("a")
        cached = (time.perf_counter() - started) / lookups * 1e6
        rounds = max(1, lookups // 20)
        spent = 0.0
        for _ in range(rounds):
            key = writer.rotate_key("a")
            started = time.perf_counter()
            found = reader.credentials.get("a")
            spent += time.perf_counter() - started
            if found is None or found.api_key != key:
                raise AssertionError("the reader did not see the rotated key at once")
        writer.close()
        reader.close()
    return {"cached_us": round(cached, 2), "after_write_us": round(spent / rounds * 1e6, 2)}


def main(argv: list[str] | None = None) -> None:
    """Print the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lookups", type=int, default=20_000)
    args = parser.parse_args(argv)
    print(measure(args.lookups))


if __name__ == "__main__":
    main()
