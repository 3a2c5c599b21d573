"""The delivery side of the event logger: events from the queue to Kafka, or to the spool while it is down.

Everything here runs on one thread (the logger's delivery thread, or the caller of ``close`` once that thread
has stopped); librdkafka's callbacks run inside ``poll``/``flush`` on that same thread. Only the probe, a
metadata request while Kafka is down, runs on a short-lived thread of its own so that a slow answer never
stops events from reaching the spool.

Kafka is *up* or *down*:

* up: events are handed to librdkafka (idempotent, acks=all, lz4). Spooled segments are replayed alongside,
  oldest first, at most ``replay_in_flight_max`` records at a time; a segment is deleted once every one of its
  records is acknowledged.
* down — entered on librdkafka's ``_ALL_BROKERS_DOWN`` error or on any failed delivery: events go straight to
  the spool. A metadata probe every ``probe_interval_s`` decides when Kafka is back.

Nothing is lost on the way: an event librdkafka gives up on (delivery timeout, purge at close, a fatal
producer error) goes to the spool; one that does not fit there is counted as dropped with its reason.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from producers.config import EventLoggerConfig
from producers.errors import SpoolError
from producers.librdkafka import PURGED, REJECTED, DeliveryCallback, ProducerFactory, ProducerLike, is_rejected
from producers.replay import Replayer
from producers.spool import Record, Spool
from producers.stats import Counters

log = logging.getLogger(__name__)

_WARN_EVERY_S = 10.0


@dataclass
class _Probe:
    signals: int  # down signals seen when the probe started
    ok: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None


class Delivery:
    """State of the delivery thread. ``submit`` takes events off the queue; ``tick`` does the rest."""

    def __init__(
        self,
        config: EventLoggerConfig,
        counters: Counters,
        spool: Spool | None,
        *,
        producer_factory: ProducerFactory,
        clock: Callable[[], float],
    ) -> None:
        self.config = config
        self._counters = counters
        self._spool = spool
        self._factory = producer_factory
        self._clock = clock
        self._producer: ProducerLike | None = None
        self._background = True
        self.up = True
        self._fatal: KafkaError | None = None
        self._probe: _Probe | None = None
        self._next_probe = 0.0
        self._down_signals = 0
        self._to_spool: list[Record] = []
        self._to_spool_bytes = 0
        self._to_spool_since = 0.0
        self._replayer = (
            Replayer(
                spool,
                counters,
                topic=config.topic,
                max_in_flight=config.replay_in_flight_max,
                on_failure=self._mark_down,
                warn=self._warn,
            )
            if spool is not None
            else None
        )
        self._on_live_cb: DeliveryCallback = self._on_live  # bound once, not per produce()
        self._warned: dict[str, float] = {}

    # ------------------------------------------------------------------------------------------ lifecycle

    def start(self, *, background: bool) -> None:
        """Create the producer (librdkafka connects in its own threads; this does not wait)."""
        self._background = background
        self._producer = self._new_producer()

    def _new_producer(self) -> ProducerLike:
        conf = self.config.librdkafka()
        conf["error_cb"] = self._on_error
        conf.setdefault("logger", logging.getLogger("producers.librdkafka"))
        return self._factory(conf)

    def close(self, timeout_s: float) -> None:
        """Deliver what can be delivered within ``timeout_s``; spool the rest; release the spool."""
        producer = self._require_producer()
        deadline = self._clock() + timeout_s
        if self.up and len(producer):
            producer.flush(max(0.0, deadline - self._clock()))
        self._purge(producer)
        if self._probe is not None and self._probe.thread is not None:
            self._probe.thread.join(self.config.probe_timeout_s + 1.0)
        self._flush_spool(force=True)
        if self._replayer is not None:
            self._replayer.finish()  # a segment settled during the flush is not sent again
        if self._spool is not None:
            self._spool.close()
        closer = getattr(producer, "close", None)  # recent confluent-kafka only; it flushes, so only when empty
        if callable(closer) and not len(producer):
            closer()

    def _purge(self, producer: ProducerLike) -> None:
        """Fail every message librdkafka still holds, and serve the reports: live events go to the spool."""
        producer.purge(in_queue=True, in_flight=True, blocking=True)
        producer.poll(0)
        for _ in range(100):  # purged reports are normally all served by the poll above; wait at most 1 s
            if not len(producer):
                break
            producer.poll(0.01)

    def _require_producer(self) -> ProducerLike:
        if self._producer is None:
            raise RuntimeError("Delivery.start() was not called")  # a bug in EventLogger, not a user error
        return self._producer

    # ------------------------------------------------------------------------------------------ live path

    def submit(self, batch: list[Record]) -> None:
        """Hand events taken off the queue (already counted in ``in_flight``) to Kafka or the spool."""
        if not batch:
            return
        if not self.up:
            self._buffer_for_spool(batch)
            return
        producer = self._require_producer()
        topic = self.config.topic
        for i, (key, value) in enumerate(batch):
            try:
                producer.produce(topic, value, key, on_delivery=self._on_live_cb)
            except BufferError:
                # librdkafka holds in_flight_max_*: Kafka is slower than the requests (or gone, not yet
                # noticed). The spool absorbs the rest and replays it.
                self._buffer_for_spool(batch[i:])
                return
            except KafkaException as exc:
                if is_rejected(exc):
                    self._drop(1, "rejected", f"Kafka refused an event: {exc}")
                    continue
                self._mark_down(f"produce failed: {exc}")
                self._buffer_for_spool(batch[i:])
                return

    def _on_live(self, err: KafkaError | None, msg: Any) -> None:
        c = self._counters
        if err is None:
            with c.lock:
                c.in_flight -= 1
                c.produced += 1
            return
        code = err.code()
        if code in REJECTED:
            self._drop(1, "rejected", f"Kafka refused an event: {err}")
            return
        if code not in PURGED:
            with c.lock:
                c.delivery_failures += 1
            self._mark_down(f"delivery failed: {err}")
        self._buffer_for_spool([(msg.key() or b"", msg.value() or b"")])

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._fatal = err
        elif err.code() == KafkaError._ALL_BROKERS_DOWN:
            self._mark_down(str(err))
        else:
            log.debug("kafka: %s", err)

    def _mark_down(self, why: str) -> None:
        self._down_signals += 1
        if self.up:
            self.up = False
            self._next_probe = self._clock()  # probe at once: the signal may be stale (see _maybe_probe)
            log.warning("Kafka unreachable (%s): spooling events until it answers again", why)

    # ------------------------------------------------------------------------------------------------ tick

    def tick(self) -> bool:
        """Serve delivery reports, probe Kafka while down, replay, write due spool batches.

        Returns True when there is more work to do right away (another spooled segment to replay).
        """
        producer = self._require_producer()
        producer.poll(0)
        if self._fatal is not None:
            self._restart_producer()
        if not self.up:
            self._maybe_probe()
        more = False
        if self.up and self._replayer is not None:
            more = self._replayer.step(self._require_producer())  # (a fatal error may have replaced it)
        self._flush_spool(force=False)
        return more

    def _maybe_probe(self) -> None:
        now = self._clock()
        if self._probe is None and now >= self._next_probe:
            self._probe = _Probe(self._down_signals)
            if self._background:
                self._probe.thread = threading.Thread(
                    target=self._run_probe, args=(self._probe,), name="event-logger-probe", daemon=True
                )
                self._probe.thread.start()
            else:
                self._run_probe(self._probe)
        probe = self._probe
        if probe is None or not probe.done.is_set():
            return
        self._probe = None
        if not probe.ok:
            self._next_probe = now + self.config.probe_interval_s
            return
        # librdkafka hands its error reports (_ALL_BROKERS_DOWN) over in poll(), possibly after Kafka is back.
        # Serve them first; if any down signal came in since the probe started, probe again at once (it
        # answers within milliseconds when Kafka is up) rather than flip to up and straight back to down.
        self._require_producer().poll(0)
        if self._down_signals != probe.signals:
            self._next_probe = now
            return
        self.up = True
        pending = self._spool.segment_count if self._spool is not None else 0
        log.warning("Kafka reachable again: live delivery resumed, %d spool segment(s) to replay", pending)

    def _run_probe(self, probe: _Probe) -> None:
        try:
            metadata = self._require_producer().list_topics(self.config.topic, timeout=self.config.probe_timeout_s)
            topic = metadata.topics.get(self.config.topic)
            probe.ok = (
                topic is not None
                and topic.error is None
                and bool(topic.partitions)
                and all(p.leader >= 0 for p in topic.partitions.values())
            )
        except Exception as exc:  # KafkaException when nobody answers; anything else: still down
            log.debug("probe: %s", exc)
            probe.ok = False
        finally:
            probe.done.set()

    def _restart_producer(self) -> None:
        err, self._fatal = self._fatal, None
        log.error("Kafka producer fatal error (%s): recreating it; its undelivered events go to the spool", err)
        old = self._require_producer()
        self._purge(old)
        self._producer = self._new_producer()
        self._mark_down(f"fatal error {err}")

    # ----------------------------------------------------------------------------------------------- spool

    def _buffer_for_spool(self, records: list[Record]) -> None:
        if not self._to_spool:
            self._to_spool_since = self._clock()
        self._to_spool.extend(records)
        self._to_spool_bytes += sum(len(k) + len(v) for k, v in records)

    def _flush_spool(self, *, force: bool) -> None:
        """Write the buffered events in one batch once it is big or old enough (group commit)."""
        if not self._to_spool:
            return
        if (
            not force
            and self._to_spool_bytes < self.config.spool_batch_bytes
            and self._clock() - self._to_spool_since < self.config.spool_linger_s
        ):
            return
        batch, self._to_spool, self._to_spool_bytes = self._to_spool, [], 0
        written, reason = 0, ""
        if self._spool is None:
            reason = "no_spool"
        else:
            try:
                written = self._spool.append(batch)
                reason = "spool_full" if written < len(batch) else ""
            except SpoolError as exc:
                written, reason = exc.written, "spool_error"
                self._warn("spool_error", f"{exc}")
        c = self._counters
        with c.lock:
            c.in_flight -= len(batch)
            c.spooled += written
            c.spool_pending += written
            if written < len(batch):
                c.dropped[reason] += len(batch) - written
        if written < len(batch):
            self._warn(reason, f"{len(batch) - written} event(s) dropped: {reason}")

    def _drop(self, n: int, reason: str, message: str) -> None:
        c = self._counters
        with c.lock:
            c.in_flight -= n
            c.dropped[reason] += n
        self._warn(reason, message)

    def _warn(self, key: str, message: str) -> None:
        now = self._clock()
        if now - self._warned.get(key, -_WARN_EVERY_S) >= _WARN_EVERY_S:
            self._warned[key] = now
            log.warning("%s", message)

    @property
    def producer(self) -> ProducerLike | None:
        return self._producer
