"""``recwatch alerter``: live anomaly detection on every monitored series, and the alerts made of it.

Reads the closed windows of ``recwatch.metrics.v1`` (``WindowAggregate``) and, once a minute of the injected
clock, the closed minutes of ``business_metrics_1m`` (only minutes that ended at least 2 min ago); scores every
series with ``detection.series.SeriesMonitor``; writes anomalies to table ``anomalies`` and topic
``recwatch.anomalies.v1`` (key: series); runs ``alerting.rules.AlertRules`` and writes every alert change to
table ``alerts`` (``updated_us`` grows: read it ``FINAL``), publishes firing and resolved alerts on
``recwatch.alerts.v1`` (key: fingerprint) and hands them to the notifiers. After each poll the open alerts are shown
to the ``watchers`` (``recwatch alerter`` runs the retrain rules there: ``rollout/retrain_trigger.py``).

Delivery and restarts. After each batch the service flushes its producer, writes the detectors, the rules and its
progress to ``detector_checkpoints`` (series prefixed ``<group>:``) and only then commits the consumer offsets
(``enable.auto.commit`` is off). A restarted service restores that checkpoint and re-reads the uncommitted windows;
windows at or before a series' last scored one are skipped, so replays (ours or the emitter's at-least-once
re-publishing) add no anomaly and no alert. A crash between publishing and checkpointing scores those windows
again on restart with the same state: the same anomaly ids (the table deduplicates them) and the same alert
fingerprint and start (the alert row is replaced), but the topics and notifiers may see those messages twice.

Bad input is data: an undecodable message is counted (``stats.bad_messages``), logged and skipped.
A notifier that raises is logged; the others still run.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from google.protobuf.message import DecodeError

from alerting.rules import AlertEvent, AlertRules
from alerting.worker_health import Offsets, StallRule
from detection.series import CHECKPOINT_VERSION, Point, SeriesMonitor, load_state
from schemas import Alert, WindowAggregate, topics
from store.base import Store, StoreError
from stream_processors.attribution import BusinessWindow

__all__ = ["AlertService", "AlertWatcher", "AlerterStats", "LoggingNotifier", "Notifier", "RecordingNotifier"]

log = logging.getLogger(__name__)

_US = 1_000_000
_RULES_SERIES = "__rules__"


class Notifier(Protocol):
    """Receives firing and resolved alerts (Alertmanager client, signed webhooks, ...). May raise: logged."""

    def notify(self, alerts: Sequence[Alert]) -> None: ...


class AlertWatcher(Protocol):
    """Shown every open (firing) alert after each poll, with the time: for rules that act on how long an alert has
    been firing (``rollout.retrain_trigger.RetrainTrigger``). ``watch`` may raise: logged, retried next poll."""

    def start(self) -> None: ...

    def watch(self, alerts: Sequence[Alert], now_us: int) -> object: ...

    def close(self) -> None: ...


class LoggingNotifier:
    """Logs each alert at WARNING (firing) or INFO (resolved)."""

    def notify(self, alerts: Sequence[Alert]) -> None:
        for a in alerts:
            level = logging.WARNING if a.status == Alert.FIRING else logging.INFO
            log.log(level, "%s %s [%s]: %s", Alert.Status.Name(a.status), a.labels["alertname"], a.severity,
                    a.annotations.get("summary", ""))  # fmt: skip


class RecordingNotifier:
    """A fake for tests: keeps every call's alerts."""

    def __init__(self) -> None:
        self.calls: list[list[Alert]] = []

    def notify(self, alerts: Sequence[Alert]) -> None:
        self.calls.append(list(alerts))

    @property
    def alerts(self) -> list[Alert]:
        return [a for call in self.calls for a in call]


@dataclass
class AlerterStats:
    windows: int = 0
    bad_messages: int = 0
    business_rows: int = 0
    anomalies: int = 0
    fired: int = 0
    resolved: int = 0
    checkpoints: int = 0
    delivery_errors: int = 0
    store_errors: int = 0  # polls the store failed (rewound to the last checkpoint and read again)


class AlertService:
    """The alerter loop. Construction does no I/O; ``start()`` restores the checkpoint and connects.

    ``clock`` (epoch s) times the business-metrics polls and the ``updated_us``/``detected_us`` columns; the topics
    are parameters so tests can use their own. A restored checkpoint brings its rules' state, but the threshold
    given here applies.
    """

    def __init__(
        self,
        store: Store,
        bootstrap: str,
        *,
        notifiers: Sequence[Notifier],
        group_id: str = "recwatch-alerter",
        threshold: float = 0.9,
        resolve_after: int = 3,
        clock: Callable[[], float] = time.time,
        metrics_topic: str = topics.METRICS,
        anomalies_topic: str = topics.ANOMALIES,
        alerts_topic: str = topics.ALERTS,
        business_every_s: float = 60.0,
        business_delay_s: float = 120.0,
        business_lookback_s: float = 1800.0,
        auto_offset_reset: str = "earliest",
        watchers: Sequence[AlertWatcher] = (),
        worker_groups: Sequence[str] = (),
        worker_stall_s: float = 120.0,
        worker_check_every_s: float = 10.0,
        worker_offsets: Callable[[str], Offsets] | None = None,
    ) -> None:
        self.store = store
        self.bootstrap = bootstrap
        self.notifiers = list(notifiers)
        self.group_id = group_id
        self.threshold = threshold
        self.clock = clock
        self.metrics_topic = metrics_topic
        self.anomalies_topic = anomalies_topic
        self.alerts_topic = alerts_topic
        self.business_every_s = business_every_s
        self.business_delay_s = business_delay_s
        self.business_lookback_s = business_lookback_s
        self.auto_offset_reset = auto_offset_reset
        self.watchers = list(watchers)
        self.worker_groups = list(worker_groups)
        self.worker_check_every_s = worker_check_every_s
        self.stall = StallRule(stall_s=worker_stall_s)
        self._worker_offsets = worker_offsets  # group -> its offsets (default: read from Kafka)
        self._next_worker_check = 0.0
        self.monitor = SeriesMonitor(threshold)
        self.rules = AlertRules(threshold=threshold, resolve_after=resolve_after)
        self.business_through_s: int | None = None  # last minute start of business_metrics_1m scored
        self.stats = AlerterStats()
        self._next_business_poll = 0.0
        self._last_updated_us = 0
        self._consumer: Any = None
        self._producer: Any = None

    # -- lifecycle -------------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Restore the checkpoint from the store, then connect to Kafka and subscribe."""
        from confluent_kafka import Consumer, Producer

        self.restore()
        self._producer = Producer(
            {
                "bootstrap.servers": self.bootstrap,
                "enable.idempotence": True,
                "linger.ms": 5,
                "client.id": self.group_id,
            }
        )
        self._consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": self.group_id,
                "enable.auto.commit": False,
                "auto.offset.reset": self.auto_offset_reset,
                "client.id": self.group_id,
            }
        )
        self._consumer.subscribe([self.metrics_topic])
        if self.worker_groups and self._worker_offsets is None:
            self._worker_offsets = KafkaGroupOffsets(self.bootstrap)
        for watcher in self.watchers:
            watcher.start()

    def close(self) -> None:
        """Flush and disconnect (everything processed was checkpointed and committed by ``poll_once``)."""
        if self._producer is not None:
            self._producer.flush(30)
            self._producer = None
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        for watcher in self.watchers:
            watcher.close()
        if isinstance(self._worker_offsets, KafkaGroupOffsets):
            self._worker_offsets.close()

    def run(self, stop: threading.Event, poll_timeout_s: float = 1.0) -> None:
        """Poll until ``stop`` is set (starts the service if needed; closes it on return). A poll the store fails
        (an insert, an alert's outbox row) is not checkpointed: the service goes back to its last checkpoint
        (``rewind``) and reads those windows again once the store answers, so no alert is lost."""
        if self._consumer is None:
            self.start()
        delay, rewind = 0.5, False
        try:
            while not stop.is_set():
                try:
                    if rewind:
                        self.rewind()
                        rewind = False
                    self.poll_once(poll_timeout_s)
                    delay = 0.5
                except StoreError as exc:
                    self.stats.store_errors += 1
                    log.warning("store error (%s): back to the last checkpoint, retrying in %.1f s", exc, delay)
                    rewind = True
                    stop.wait(delay)
                    delay = min(2 * delay, 10.0)
        finally:
            self.close()

    def rewind(self) -> None:
        """Back to the last checkpoint: detectors, rules and progress from the store, the consumer to its committed
        offsets (what was read since is read again)."""
        self.monitor = SeriesMonitor(self.threshold)
        self.rules = AlertRules(threshold=self.threshold, resolve_after=self.rules.resolve_after)
        self.stall = StallRule(stall_s=self.stall.stall_s)
        self.business_through_s = None
        self._next_business_poll = 0.0
        self.restore()
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        assignment = self._consumer.assignment()
        if assignment:
            for tp in self._consumer.committed(assignment, timeout=10):
                offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
                self._consumer.seek(TopicPartition(tp.topic, tp.partition, offset))

    # -- one step --------------------------------------------------------------------------------------------------

    def poll_once(self, timeout_s: float = 1.0) -> int:
        """Read up to 500 messages (waiting at most ``timeout_s``), score, alert, checkpoint, commit.

        Also polls ``business_metrics_1m`` when due. Returns the number of messages read (bad ones included).
        """
        if self._consumer is None:
            raise RuntimeError("AlertService.start() was not called")
        messages = self._consumer.consume(num_messages=500, timeout=timeout_s)
        points: list[Point] = []
        read = 0
        for msg in messages:
            if msg.error() is not None:
                log.warning("consumer error on %s: %s", self.metrics_topic, msg.error())
                continue
            read += 1
            try:
                aggregate = WindowAggregate.FromString(msg.value() or b"")
            except DecodeError as exc:
                self.stats.bad_messages += 1
                log.warning(
                    "undecodable WindowAggregate at %s[%d]@%d skipped: %s",
                    msg.topic(), msg.partition(), msg.offset(), exc,
                )  # fmt: skip
                continue
            self.stats.windows += 1
            points.extend(self.monitor.evaluate(aggregate))
        business = 0
        if self.clock() >= self._next_business_poll:
            business, more = self._poll_business()
            points.extend(more)
        if points:
            self._handle(points)
        checked = self._check_workers()
        # offsets are committed only once what they produced is delivered and checkpointed
        if (read or business or checked) and self._checkpoint() and read:
            self._commit()
        self._watch()
        return read

    def _watch(self) -> None:
        """Show the watchers the open alerts (after the checkpoint: what they act on is stored)."""
        if not self.watchers:
            return
        firing = [_copy_alert(o.alert) for o in self.rules.open.values() if o.alert.status == Alert.FIRING]
        now_us = int(self.clock() * _US)
        for watcher in self.watchers:
            try:
                watcher.watch(firing, now_us)
            except Exception:
                log.exception("alert watcher %r failed; retried on the next poll", watcher)

    def _commit(self) -> None:
        from confluent_kafka import KafkaError, KafkaException

        try:
            self._consumer.commit(asynchronous=False)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._NO_OFFSET:
                log.warning("offset commit failed (windows will be re-read and deduplicated): %s", exc)

    def _poll_business(self) -> tuple[int, list[Point]]:
        """Closed minutes of ``business_metrics_1m`` after the last one scored."""
        now = self.clock()
        self._next_business_poll = now + self.business_every_s
        through = int(now - self.business_delay_s) // 60 * 60 - 60  # start of the last minute ended >= delay ago
        since = self.business_through_s if self.business_through_s is not None else through - self.business_lookback_s
        if through <= since:
            return 0, []
        sql = (
            "SELECT toUInt32(window_start) AS ws, model, version, label, impressions, clicked_impressions,"
            " bought_impressions FROM business_metrics_1m"
            f" WHERE window_start > toDateTime({int(since)}) AND window_start <= toDateTime({through})"
            " ORDER BY ws, model, version, label"
        )
        try:
            rows = self.store.query(sql).rows
        except StoreError as exc:
            log.warning("business metrics not read (retried in %.0f s): %s", self.business_every_s, exc)
            return 0, []
        points = []
        for ws, model, version, label, impressions, clicked, bought in rows:
            window = BusinessWindow(
                window_start=int(ws),
                model=str(model),
                version=int(version),
                label=str(label),
                impressions=int(impressions),
                clicked_impressions=int(clicked),
                bought_impressions=int(bought),
            )
            points.extend(self.monitor.evaluate_business(window))
        self.business_through_s = through
        self.stats.business_rows += len(rows)
        return max(len(rows), 1), points

    def _now_us(self) -> int:
        """The clock in µs, strictly increasing per call (the version of replaced rows)."""
        self._last_updated_us = max(self._last_updated_us + 1, int(self.clock() * _US))
        return self._last_updated_us

    def _check_workers(self) -> bool:
        """``RecwatchWorkerStalled`` for each watched worker group, every ``worker_check_every_s``; True when an
        alert changed (the stall state is checkpointed then)."""
        if not self.worker_groups or self._worker_offsets is None or self.clock() < self._next_worker_check:
            return False
        now = self.clock()
        self._next_worker_check = now + self.worker_check_every_s
        events: list[AlertEvent] = []
        for group in self.worker_groups:
            try:
                offsets = self._worker_offsets(group)
            except Exception as exc:  # Kafka down: nothing is known, nothing changes
                log.warning("offsets of worker group %s not read: %s", group, exc)
                continue
            events.extend(self.stall.observe(now, group, offsets))
        if events:
            self._emit(events)
        return bool(events)

    def _handle(self, points: list[Point]) -> None:
        anomalies = [(p.series, p.anomaly) for p in points if p.anomaly is not None]
        events: list[AlertEvent] = [e for p in points for e in self.rules.step(p)]
        now_us = self._now_us()
        if anomalies:
            self.store.insert(
                "anomalies",
                {
                    "ts_us": [a.ts_us for _, a in anomalies],
                    "anomaly_id": [a.anomaly_id for _, a in anomalies],
                    "metric": [a.metric for _, a in anomalies],
                    "model": [a.model for _, a in anomalies],
                    "version": [a.version for _, a in anomalies],
                    "label": [a.label for _, a in anomalies],
                    "replica": [a.replica for _, a in anomalies],
                    "value": [a.value for _, a in anomalies],
                    "score": [a.score for _, a in anomalies],
                    "threshold": [a.threshold for _, a in anomalies],
                    "detector": [a.detector for _, a in anomalies],
                    "detected_us": [now_us] * len(anomalies),
                },
            )
            for series, a in anomalies:
                self._produce(self.anomalies_topic, series, a.SerializeToString())
            self.stats.anomalies += len(anomalies)
        if events:
            self._emit(events)

    def _emit(self, events: Sequence[AlertEvent]) -> None:
        """Alert changes to the ``alerts`` table, the alerts topic and the notifiers."""
        now_us = self._now_us()
        alerts = [e.alert for e in events]
        self.store.insert(
            "alerts",
            {
                "starts_at_us": [a.starts_at_us for a in alerts],
                "ends_at_us": [a.ends_at_us for a in alerts],
                "fingerprint": [a.fingerprint for a in alerts],
                "status": [Alert.Status.Name(a.status) for a in alerts],
                "severity": [a.severity for a in alerts],
                "alertname": [a.labels["alertname"] for a in alerts],
                "model": [a.labels["model"] for a in alerts],
                "version": [int(a.labels["version"]) for a in alerts],
                "label": [a.labels["label"] for a in alerts],
                "metric": [a.labels["metric"] for a in alerts],
                "label_names": [sorted(a.labels) for a in alerts],
                "label_values": [[a.labels[k] for k in sorted(a.labels)] for a in alerts],
                "annotation_names": [sorted(a.annotations) for a in alerts],
                "annotation_values": [[a.annotations[k] for k in sorted(a.annotations)] for a in alerts],
                "anomaly_ids": [list(a.anomaly_ids) for a in alerts],
                "updated_us": [now_us] * len(alerts),
            },
        )
        notified = [e.alert for e in events if e.kind != "updated"]
        for alert in notified:
            self._produce(self.alerts_topic, alert.fingerprint, alert.SerializeToString())
        self.stats.fired += sum(e.kind == "fired" for e in events)
        self.stats.resolved += sum(e.kind == "resolved" for e in events)
        if notified:
            for notifier in self.notifiers:
                try:
                    notifier.notify(notified)
                except StoreError:
                    raise  # an outbox that could not store the notification: fail the poll, do not checkpoint it
                except Exception:
                    log.exception("notifier %r failed on %d alerts", notifier, len(notified))

    def _produce(self, topic: str, key: str, value: bytes) -> None:
        def on_delivery(err: Any, _msg: Any) -> None:
            if err is not None:
                self.stats.delivery_errors += 1
                log.error("delivery to %s failed: %s", topic, err)

        while True:
            try:
                self._producer.produce(topic, value, key.encode(), on_delivery=on_delivery)
                break
            except BufferError:
                self._producer.poll(0.1)  # local queue full: let it drain
        self._producer.poll(0)

    # -- checkpoints -----------------------------------------------------------------------------------------------

    def _checkpoint(self) -> bool:
        """Flush the producer, then store the state. False (and no checkpoint) when messages are undelivered."""
        remaining = self._producer.flush(30)
        if remaining:
            log.error("%d anomaly/alert messages undelivered: not checkpointing, offsets stay uncommitted", remaining)
            return False
        now_us = self._now_us()
        rows = self.monitor.checkpoint(now_us)
        state = {
            "v": CHECKPOINT_VERSION,
            "state": {
                "open": self.rules.to_json(),
                "business_through_s": self.business_through_s,
                "stall": self.stall.to_json(),
            },
        }
        rows.append(
            {
                "series": _RULES_SERIES,
                "detector": "alert_rules",
                "through_us": (self.business_through_s or 0) * _US,
                "state": json.dumps(state, separators=(",", ":")),
                "updated_us": now_us,
            }
        )
        prefix = f"{self.group_id}:"
        self.store.insert(
            "detector_checkpoints",
            {
                "series": [prefix + r["series"] for r in rows],
                "detector": [r["detector"] for r in rows],
                "through_us": [r["through_us"] for r in rows],
                "state": [r["state"] for r in rows],
                "updated_us": [r["updated_us"] for r in rows],
            },
        )
        self.stats.checkpoints += 1
        return True

    def restore(self) -> None:
        """Load this group's latest checkpoint rows (none: start fresh)."""
        prefix = f"{self.group_id}:"
        literal = "'" + prefix.replace("\\", "\\\\").replace("'", "\\'") + "'"
        result = self.store.query(
            "SELECT series, argMax(detector, updated_us), argMax(through_us, updated_us), argMax(state, updated_us),"
            " max(updated_us) FROM detector_checkpoints"
            f" WHERE substring(series, 1, {len(prefix.encode())}) = {literal} GROUP BY series"
        )
        rows = []
        for series, detector, through_us, state, updated_us in result.rows:
            name = str(series)[len(prefix) :]
            self._last_updated_us = max(self._last_updated_us, int(updated_us))
            if name == _RULES_SERIES:
                saved = load_state(str(state), dict)
                if isinstance(saved.get("rules"), AlertRules):  # version 0: the pickled AlertRules
                    self.rules.open = saved["rules"].open
                else:
                    self.rules.restore_json(saved["open"])
                self.business_through_s = saved["business_through_s"]
                self.stall = StallRule.from_json(saved.get("stall", {}), stall_s=self.stall.stall_s)
                continue
            rows.append({"series": name, "detector": detector, "through_us": through_us, "state": state})
        self.monitor.restore(rows)
        if result.rows:
            log.info("restored %d checkpoint rows of group %s", len(result.rows), self.group_id)


def _copy_alert(alert: Alert) -> Alert:
    out = Alert()
    out.CopyFrom(alert)
    return out


class KafkaGroupOffsets:
    """A consumer group's committed and end offsets per partition of the topics it has committed on (Kafka admin
    API and watermarks; the adapter of ``StallRule``)."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self._admin: Any = None
        self._consumer: Any = None

    def __call__(self, group: str) -> Offsets:
        from confluent_kafka import Consumer, ConsumerGroupTopicPartitions
        from confluent_kafka.admin import AdminClient

        if self._admin is None:
            self._admin = AdminClient({"bootstrap.servers": self.bootstrap})
            self._consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": f"{group}-lag-reader"})
        futures = self._admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)], request_timeout=10)
        committed = futures[group].result(timeout=15).topic_partitions
        out: dict[tuple[str, int], tuple[int, int]] = {}
        for tp in committed:
            if tp.error is not None:
                continue
            _, end = self._consumer.get_watermark_offsets(tp, timeout=10, cached=False)
            out[(tp.topic, tp.partition)] = (int(tp.offset), int(end))
        return out

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        self._admin = None
