"""Report this cluster to the root orchestrator: register once, then report.

Runs on its own thread so a slow or absent root never delays the core loop:

* registration: ``POST /api/v1/clusters/register`` with the registration token. The
  answer (cluster id + credential) is persisted in the store (``meta`` collection,
  document ``root_registration``) and presented again after a restart, so the
  cluster keeps its id. What a refusal means decides what happens to that identity
  (see `root_client`): a refused *registration token* (401) keeps it — the reporter
  retries with backoff and logs that the token is wrong — while a refused *identity*
  (403/404/410; the root answers 403 to a known id with a wrong credential) drops
  it and registers as a new cluster;
* reports, latency first: an instance or capacity change wakes the reporter. After a
  quiet spell the change goes out after a `COALESCE_S` (5 ms) delay, so that changes
  arriving together (e.g. a drain's moves) share a report. Under load the
  batching is natural: one report is in flight at a time, and whatever changed
  meanwhile goes out in the next one as soon as it returns, with no delay.
  ``report_debounce`` (default 0: off) optionally sets a least time between the
  starts of two change-triggered reports. A change report is a delta
  (``full=false``: only the changes); at least every ``report_interval`` (or the
  root's ``report_interval_s`` if shorter) a full report lists every instance. Each
  report carries the whole capacity aggregate;
* failures: changes that could not be sent go back to the front of the buffer
  (bounded: 10,000; a full report heals anything dropped), the reporter backs off
  (1 s doubling to 30 s) and retries; a refused credential (401/403 on a report)
  makes it register again with its stored identity.

``seq`` is the wall clock in milliseconds, so it keeps increasing across restarts.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from pydantic import SecretStr

from cluster_orchestrator.core import ClusterCore
from cluster_orchestrator.metrics import Metrics
from cluster_orchestrator.persister import Persister
from cluster_orchestrator.records import META
from cluster_orchestrator.root_client import (
    CredentialRefused,
    IdentityRefused,
    RegistrationTokenRefused,
    RootAuthError,
    RootClient,
    RootError,
)
from cluster_orchestrator.settings import ClusterSettings
from schemas.cluster import ClusterRegistration, ClusterRegistrationResponse, InstanceChange
from store import Store

__all__ = ["COALESCE_S", "REGISTRATION_DOC", "Reporter", "change_report_at"]

log = logging.getLogger(__name__)

REGISTRATION_DOC = "root_registration"
MAX_BACKOFF_S = 30.0
#: Changes that follow a quiet spell wait this long for their companions (changes made
#: by one decision, or by messages that arrived together) before the report goes out.
COALESCE_S = 0.005


def change_report_at(
    now: float,
    *,
    quiet: bool,
    last_started: float,
    min_spacing: float,
    coalesce: float = COALESCE_S,
) -> float:
    """When a change-triggered report should start (monotonic seconds).

    `quiet`: the reporter was idle when the change came (nothing was in flight), so
    the change waits `coalesce` for companions. Otherwise changes piled up while the
    previous report was in flight and go at once. `min_spacing` (``report_debounce``)
    keeps starts at least that far apart (0: no constraint).
    """
    at = now + coalesce if quiet else now
    if min_spacing > 0:
        at = max(at, last_started + min_spacing)
    return at


class Reporter:
    """Registers with the root and sends reports; see the module docstring.

    `first_backoff` is the first retry delay after a failure (doubling to 30 s);
    tests shorten it.
    """

    def __init__(
        self,
        *,
        settings: ClusterSettings,
        core: ClusterCore,
        client: RootClient,
        store: Store,
        persister: Persister,
        metrics: Metrics,
        api_token: str,
        mono: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        first_backoff: float = 1.0,
    ) -> None:
        self._settings = settings
        self._core = core
        self._client = client
        self._store = store
        self._persister = persister
        self._metrics = metrics
        self._api_token = api_token
        self._mono = mono
        self._wall = wall
        self._first_backoff = first_backoff
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._registration: ClusterRegistrationResponse | None = None
        self._stored: dict[str, Any] | None = None
        self._last_seq = 0
        self.last_success: float | None = None
        self.last_error: str = ""

    # ---------------------------------------------------------------- lifecycle

    @property
    def cluster_id(self) -> str | None:
        """The id the root gave us (None before the first registration)."""
        if self._registration is not None:
            return self._registration.cluster_id
        return str(self._stored["cluster_id"]) if self._stored else None

    @property
    def registered(self) -> bool:
        """True once registered in this run."""
        return self._registration is not None

    def start(self) -> None:
        """Load a stored registration and start the thread."""
        doc = self._store.get(META, REGISTRATION_DOC)
        if doc is not None and doc.get("cluster_id") and doc.get("credential"):
            self._stored = doc
        self._core.add_listener(self.trigger)
        self._thread = threading.Thread(target=self._run, name="root-reporter", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread (a report in flight finishes or times out)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._client.close()

    def trigger(self) -> None:
        """Something changed: report soon (debounced). Safe from any thread."""
        self._wake.set()

    # ---------------------------------------------------------------- loop

    def _interval(self) -> float:
        interval = self._settings.report_interval
        if self._registration is not None:
            interval = min(interval, self._registration.report_interval_s)
        return interval

    def _run(self) -> None:
        backoff = self._first_backoff
        next_full = self._mono()
        last_started = -math.inf
        while not self._stop.is_set():
            if self._registration is None:
                try:
                    self._register()
                    backoff = self._first_backoff
                    next_full = self._mono()
                except RegistrationTokenRefused as exc:
                    self._failed(
                        f"the root refused our registration token ({exc}); check "
                        f"--registration-token; keeping cluster id {self.cluster_id or '(none)'}"
                        f", retrying in {backoff:g} s"
                    )
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF_S)
                    continue
                except RootError as exc:
                    self._failed(f"registration failed: {exc}; retrying in {backoff:g} s")
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF_S)
                    continue
            now = self._mono()
            full = now >= next_full
            if not full:
                # Set already: changes came while the last report was in flight.
                quiet = not self._wake.is_set()
                if quiet and not self._wake.wait(max(0.0, next_full - now)):
                    continue  # timed out: a full report is due
                if self._stop.is_set():
                    return
                send_at = change_report_at(
                    self._mono(),
                    quiet=quiet,
                    last_started=last_started,
                    min_spacing=self._settings.report_debounce,
                )
                delay = send_at - self._mono()
                if delay > 0 and self._stop.wait(delay):
                    return
                full = self._mono() >= next_full
            self._wake.clear()
            changes = self._core.take_changes()
            last_started = self._mono()
            try:
                self._send(full, changes)
            except CredentialRefused as exc:
                self._core.requeue_changes(changes)
                self._failed(f"the root refused our credential ({exc}); registering again")
                self._registration = None
                continue
            except (RootError, TimeoutError) as exc:
                self._core.requeue_changes(changes)
                self._failed(f"report failed: {exc}")
                self._stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                self._wake.set()  # retry the changes after the backoff
                continue
            backoff = self._first_backoff
            if full:
                next_full = self._mono() + self._interval()

    def _failed(self, text: str) -> None:
        self.last_error = text
        self._metrics.inc("edge_cluster_reports_total", {"result": "error"})
        log.warning("root reporting: %s", text)

    def _next_seq(self) -> int:
        seq = max(int(self._wall() * 1000), self._last_seq + 1)
        self._last_seq = seq
        return seq

    def _send(self, full: bool, changes: list[InstanceChange]) -> None:
        assert self._registration is not None
        seq = self._next_seq()
        report = self._core.call(
            lambda: self._core.build_report(seq=seq, full=full, changes=changes)
        ).result(timeout=10.0)
        self._client.report(
            self._registration.cluster_id,
            report,
            self._registration.credential.get_secret_value(),
        )
        self.last_success = self._wall()
        self.last_error = ""
        self._metrics.inc("edge_cluster_reports_total", {"result": "full" if full else "delta"})

    def _registration_body(self, with_identity: bool) -> ClusterRegistration:
        stored = self._stored if with_identity else None
        return ClusterRegistration(
            name=self._settings.name,
            url=self._settings.effective_url,
            location=self._settings.location,
            labels=dict(self._settings.labels),
            cluster_id=str(stored["cluster_id"]) if stored else None,
            credential=SecretStr(str(stored["credential"])) if stored else None,
            api_token=SecretStr(self._api_token),
        )

    def _register(self) -> None:
        """Register with the stored identity if any; a fresh registration only when the
        root refuses that identity (never because of the registration token)."""
        token = self._settings.registration_token
        if token is None:
            raise RootAuthError("no registration token configured (--registration-token)")
        try:
            response = self._client.register(
                self._registration_body(True), token.get_secret_value()
            )
        except IdentityRefused as exc:
            if self._stored is None:
                raise
            log.warning(
                "the root refused our stored identity, cluster %s (%s); registering as a "
                "new cluster",
                self._stored.get("cluster_id"),
                exc,
            )
            self._stored = None
            response = self._client.register(
                self._registration_body(False), token.get_secret_value()
            )
        self._registration = response
        doc = {
            "_id": REGISTRATION_DOC,
            "cluster_id": response.cluster_id,
            "credential": response.credential.get_secret_value(),
            "root_url": self._settings.root_url,
            "registered_at": self._wall(),
        }
        self._stored = doc
        done = self._persister.put(META, doc, wait=True)
        if done is not None:
            done.result(timeout=10.0)
        log.info("registered with the root as cluster %s", response.cluster_id)
        self._metrics.inc("edge_cluster_reports_total", {"result": "registered"})
