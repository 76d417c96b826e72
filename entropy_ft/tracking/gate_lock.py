"""One registration at a time may decide about ``champion``: a lock the MLflow registry itself keeps.

Two ``register`` steps that finish together (a scheduled run and a manual ``submit``) would each
read the champion, compare against it and set the alias; both could promote, and the last writer
would win even if it were the weaker model. MLflow has no compare-and-set on an alias, but its
registry does refuse a second registered model of the same name (a unique key in the SQL store:
``RESOURCE_ALREADY_EXISTS``). So the lock is a registered model ``<name>.gate-lock``: whoever
creates it holds it, and deletes it when done. The whole decision happens under it (read the
champion, compare head to head, create the version with its tags, set the aliases), so each
registration decides against the champion that the one before it left.

A holder that dies (SIGKILL, a lost node) cannot delete it. So the lock carries an expiry, which
the holder's heartbeat pushes forward every ``ttl_s / 3``; a lock past its expiry is broken by
the next one to wait for it. The holder checks that the lock is still its own before it moves an
alias. What the registry UI shows meanwhile: one extra registered model, ``<name>.gate-lock``,
for as long as a registration decides.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterator

from entropy_ft.errors import UserError
from entropy_ft.logs import log

SUFFIX = ".gate-lock"
OWNER_TAG, EXPIRES_TAG = "entropy_ft.lock.owner", "entropy_ft.lock.expires"
TTL_S = 120.0  # a dead holder's lock lasts this long
WAIT_S = 3600.0  # how long a registration waits for the lock before it gives up (exit 2)


class Held:
    """The lock while it is held: ``check()`` raises if it was broken (the holder's heartbeat stopped)."""

    def __init__(self, client, name: str, owner: str, ttl_s: float):
        self.client, self.name, self.owner, self.ttl_s = client, name, owner, ttl_s
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name="gate-lock-heartbeat", daemon=True)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            with contextlib.suppress(Exception):  # a missed beat is retried; check() finds a lost lock
                self.client.set_registered_model_tag(self.name, EXPIRES_TAG, repr(time.time() + self.ttl_s))

    def check(self) -> None:
        if _owner(self.client, self.name) != self.owner:
            raise UserError(f"lost the registry lock {self.name} while deciding (it expired and another "
                            "registration took it); no alias was moved")


def _owner(client, name: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name).tags.get(OWNER_TAG)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def _break_if_expired(client, name: str) -> None:
    """Delete a lock whose holder stopped beating. Two waiters may both see it expired: the second's delete
    then finds it gone, or (a narrow window) removes the first's fresh lock; the first's check() sees that."""
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return
        raise
    expires = float(model.tags.get(EXPIRES_TAG, "0") or 0)
    if time.time() > expires:
        log.warning("breaking the registry lock %s: its holder %s stopped %.0f s ago", name,
                    model.tags.get(OWNER_TAG, "unknown"), time.time() - expires)
        with contextlib.suppress(MlflowException):
            client.delete_registered_model(name)


@contextlib.contextmanager
def gate_lock(client, model_name: str, ttl_s: float = TTL_S, wait_s: float = WAIT_S) -> Iterator[Held]:
    """Hold ``<model_name>.gate-lock`` for the block; waits (logging who holds it) up to ``wait_s``."""
    from mlflow.exceptions import MlflowException

    name = model_name + SUFFIX
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    deadline, announced = time.monotonic() + wait_s, False
    while True:
        try:
            client.create_registered_model(
                name, tags={OWNER_TAG: owner, EXPIRES_TAG: repr(time.time() + ttl_s)},
                description=f"entropy-ft: a registration of {model_name} is deciding about its champion")
            break
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        if not announced:
            log.info("another registration of %s is deciding (lock %s held by %s): waiting", model_name, name,
                     _owner(client, name))
            announced = True
        _break_if_expired(client, name)
        if time.monotonic() > deadline:
            raise UserError(f"waited {wait_s:.0f} s for the registry lock {name}; another registration still holds "
                            "it. Nothing was registered")
        time.sleep(0.2 + random.random() * 0.3)
    held = Held(client, name, owner, ttl_s)
    held._beat.start()
    try:
        yield held
    finally:
        held._stop.set()
        held._beat.join(timeout=5)
        try:
            if _owner(client, name) == owner:
                client.delete_registered_model(name)
        except MlflowException as exc:  # an undeleted lock expires after ttl_s: the next registration breaks it
            log.warning("could not release the registry lock %s (%s); it expires in %.0f s", name, exc, ttl_s)
