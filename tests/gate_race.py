"""A contender in the registration race (``tests/test_gate_lock.py``), in its own process.

Each round both contenders start together (a barrier), read the champion, take the time a
head-to-head takes, decide by the versions' scores, record the decision on their own version
and set ``champion`` if they won: exactly what ``register`` does about the alias, with the
comparison replaced by a known score so that the right answer is known.
"""

from __future__ import annotations

import contextlib
import time


def contend(rank: int, versions: list[list[str]], model_name: str, barrier, use_lock: bool, decide_s: float) -> None:
    from mlflow import MlflowClient

    from entropy_ft.tracking import registry
    from entropy_ft.tracking.gate_lock import gate_lock

    client = MlflowClient()
    for pair in versions:
        mine = pair[rank]
        barrier.wait()
        with gate_lock(client, model_name) if use_lock else contextlib.nullcontext() as lock:
            champion = registry.champion_version(client, model_name)
            theirs = float(client.get_model_version(model_name, champion).tags["score"]) if champion else float("-inf")
            time.sleep(decide_s)
            promote = float(client.get_model_version(model_name, mine).tags["score"]) > theirs
            client.set_model_version_tag(model_name, mine, "decided_against", champion or "none")
            client.set_model_version_tag(model_name, mine, "promoted", str(promote).lower())
            if lock is not None:
                lock.check()
            if promote:
                client.set_registered_model_alias(model_name, registry.CHAMPION, mine)
        barrier.wait()


def hold(model_name: str, ttl_s: float) -> None:
    """Take the lock, say so, and wait to be killed (a pod that dies mid-decision)."""
    from mlflow import MlflowClient

    from entropy_ft.tracking.gate_lock import gate_lock

    with gate_lock(MlflowClient(), model_name, ttl_s=ttl_s):
        print("held", flush=True)
        time.sleep(600)
