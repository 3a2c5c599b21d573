"""The demo's closed-loop stories, each printed as a timeline read back from the real system.

- **drift**: the shop's traffic drifts (``Traffic.drift``: every candidate from 500 items of the ranker's training
  catalog) and its shoppers acquire a taste the stable ranker does not know (``Shop.taste``: a seeded 10 % of those
  items are hot, clicked far more often whatever their score, the rank still counting), ``recwatch alerter`` fires
  ``RecwatchScoreMeanDrift`` on the stable version, its retrain rules publish ``RETRAIN_REQUESTED``, ``recwatch
  trainer`` trains a new version on the feedback, which learns the taste, finds it better than stable on the holdout
  and asks for its deployment, ``recwatch controller`` canaries it, raises its weight and promotes it.
- **bad-canary**: a copy of stable with injected latency (x5) and errors (20 %), limited to that version by the fault
  file, is deployed with ``recwatch update deploy``; the controller compares it with stable and rolls it back.

Both stories run on one model served by its own ``recwatch serve --model_config_file --canary_weights_file`` (the
files the controller edits), named ``ranker-<run>`` so that a new run does not inherit an earlier run's rollout
history from the model-updates topic (the topic is every process's state). The timeline's rows come from the
model-updates topic (each record's Kafka timestamp: when it was published), the ``alerts`` table (when the alerter
fired) and the demo's own actions; ``deployments`` is shown with ``recwatch sql``.

Demo-only settings (all command-line flags of the processes, production defaults in brackets): 30 s comparison
windows [60], one healthy window per step [3], at least 100 requests [500] and 1,000 impressions [2,000] per arm, a
retrain after 60 s of firing [300], the trainer on the last 20 minutes [1 day] with at least 300 events [1,000] and
3 epochs (its margin is the default, 0.005 AUC), the worker's allowed lateness 5 s [30].
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from infra import processes
from schemas import ModelUpdate

GRPC_PORT = 8510
RATE = 20.0  # Predict calls/s, all to the story's ranker
WINDOW_S = 30  # the controller's comparison window
DRIFT_ALERT = "RecwatchScoreMeanDrift"
CONTROLLER_FLAGS = ["--window-seconds", str(WINDOW_S), "--steps", "0.25,0.5", "--healthy-windows", "1",
                    "--min-requests", "100", "--min-impressions", "1000"]  # fmt: skip
TRAINER_FLAGS = ["--window-minutes", "20", "--min-events", "300", "--epochs", "3"]
ALERTER_FLAGS = ["--retrain-after-s", "60", "--retrain-min-interval-s", "3600"]
DRIFT_DEADLINE_S = 600
DRIFT_ITEMS = 500  # the drifted catalog: few enough items that each is shown (and a hot one clicked) every few seconds
BAD_CANARY_DEADLINE_S = 300


# -- the timeline (pure) -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One row of a timeline: when (epoch s), who, what."""

    at_s: float
    actor: str
    text: str


@dataclass(frozen=True)
class AlertRow:
    """An alert read from the ``alerts`` table; ``fired_us`` is the earliest ``updated_us`` seen (read it while the
    alert is new: once merged, the table keeps only its latest row)."""

    fingerprint: str
    alertname: str
    model: str
    version: int
    label: str
    starts_at_us: int
    fired_us: int
    summary: str


def hms(at_s: float) -> str:
    return datetime.fromtimestamp(at_s, UTC).strftime("%H:%M:%S")


def _short(text: str, n: int = 110) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def update_entry(u: ModelUpdate, at_s: float) -> Entry:
    """A model update as a timeline row (``at_s``: when it was published, its record's Kafka timestamp)."""
    kind = ModelUpdate.Kind.Name(u.kind)
    what = f"{kind} v{u.version}" if u.version else kind
    parts = [what]
    if u.kind == ModelUpdate.RETRAIN_REQUESTED:
        parts.append(f"of v{u.parent_version}, id {u.update_id[:8]}, caused by alert {u.caused_by[:8]}")
    elif u.kind in (ModelUpdate.CANARY_DEPLOYED, ModelUpdate.WEIGHT_CHANGED):
        parts.append(f"weight {u.canary_weight:g}")
    elif u.kind == ModelUpdate.EVALUATED and "auc" in u.metrics:
        verdict = "accepted" if u.metrics.get("accepted") else "refused"
        stable_auc = u.metrics.get("stable_auc")
        vs = f" vs stable v{u.parent_version} {stable_auc:.3f}" if stable_auc is not None else ""
        parts.append(f"AUC {u.metrics['auc']:.3f}{vs}: {verdict}")
    elif u.kind == ModelUpdate.TRAINING_PROGRESS and "epoch" in u.metrics:
        parts.append(f"epoch {int(u.metrics['epoch'])}/{int(u.metrics.get('epochs', 0))}")
    if u.kind in (ModelUpdate.DEPLOY_REQUESTED, ModelUpdate.CANARY_DEPLOYED):
        parts.append(f"id {u.update_id[:8]}")
    if u.kind in (ModelUpdate.WEIGHT_CHANGED, ModelUpdate.PROMOTED, ModelUpdate.ROLLED_BACK, ModelUpdate.REJECTED):
        window = f"window {hms(u.ts_us / 1e6)}: " if u.actor == "controller" and u.ts_us else ""
        parts.append(f"({window}{_short(u.reason)})")
    elif u.kind == ModelUpdate.TRAINING_STARTED:
        parts.append(f"({_short(u.reason, 80)})")
    return Entry(at_s, u.actor or "?", " ".join(parts))


def alert_entry(a: AlertRow) -> Entry:
    label = f" ({a.label})" if a.label else ""
    return Entry(
        a.fired_us / 1e6,
        "alerter",
        f"FIRING {a.alertname} {a.model} v{a.version}{label}, fingerprint {a.fingerprint[:8]}, first anomalous "
        f"window {hms(a.starts_at_us / 1e6)}: {_short(a.summary, 90)}",
    )


def timeline_lines(entries: Iterable[Entry], start_s: float) -> list[str]:
    """The entries in time order: ``HH:MM:SS (UTC)  +elapsed s  actor  what``."""
    return [
        f"{hms(e.at_s)}  {e.at_s - start_s:+7.1f}s  {e.actor:<10}  {e.text}"
        for e in sorted(entries, key=lambda e: e.at_s)
    ]


def lineage(updates: Sequence[ModelUpdate], fingerprint: str) -> list[str]:
    """The chain from an alert to what it caused, following ``caused_by``: the rules' retrain names the alert, the
    trainer's deploy command names the retrain, and the controller's events name the deploy command."""

    def caused(kind: int, cause: str) -> ModelUpdate | None:
        return next((u for u in updates if u.kind == kind and u.caused_by == cause), None)

    chain = [f"alert {fingerprint[:8]}"]
    retrain = caused(ModelUpdate.RETRAIN_REQUESTED, fingerprint)
    if retrain is None:
        return chain
    chain.append(f"RETRAIN_REQUESTED {retrain.update_id[:8]}")
    deploy = caused(ModelUpdate.DEPLOY_REQUESTED, retrain.update_id)
    if deploy is None:
        return chain
    chain.append(f"DEPLOY_REQUESTED {deploy.update_id[:8]} (v{deploy.version})")
    for kind in (ModelUpdate.CANARY_DEPLOYED, ModelUpdate.PROMOTED, ModelUpdate.ROLLED_BACK):
        u = caused(kind, deploy.update_id)
        if u is not None:
            chain.append(f"{ModelUpdate.Kind.Name(kind)} v{u.version}")
    return chain


def windows_until(canary_ts_us: int, decision_window_us: int, window_s: int) -> int:
    """How many comparison windows the controller looked at: the first starts at or after the canary went live
    (earlier windows are not judged), the last is the one it decided on."""
    w = window_s * 1_000_000
    first = -(-canary_ts_us // w) * w
    return (decision_window_us - first) // w + 1


# -- reading the system ----------------------------------------------------------------------------------------------


class UpdatesReader:
    """Every record of the model-updates topic for one model, with its Kafka timestamp (publish time)."""

    def __init__(self, bootstrap: str, model: str) -> None:
        from confluent_kafka import Consumer

        from schemas import topics

        self.model = model
        self.records: list[tuple[float, ModelUpdate]] = []
        self._seen: set[str] = set()
        self._consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": f"demo-reader-{uuid.uuid4().hex}",
             "auto.offset.reset": "earliest", "enable.auto.commit": False}
        )  # fmt: skip
        self._consumer.subscribe([topics.MODEL_UPDATES])

    def poll(self) -> list[ModelUpdate]:
        for msg in self._consumer.consume(500, 0.5):
            value = msg.value()
            if msg.error() or value is None:
                continue
            u = ModelUpdate.FromString(value)
            if u.model == self.model and u.update_id not in self._seen:
                self._seen.add(u.update_id)
                self.records.append((msg.timestamp()[1] / 1000.0, u))
        return self.updates()

    def updates(self) -> list[ModelUpdate]:
        return [u for _, u in self.records]

    def find(self, kind: int, **fields: Any) -> ModelUpdate | None:
        for u in self.poll():
            if u.kind == kind and all(getattr(u, k) == v for k, v in fields.items()):
                return u
        return None

    def entries(self, since_s: float) -> list[Entry]:
        return [update_entry(u, at) for at, u in self.records if at >= since_s]

    def close(self) -> None:
        self._consumer.close()


def _alert_rows(store: Any, model: str, since_us: int, alertname: str | None = None) -> list[AlertRow]:
    name = f" AND alertname = '{alertname}'" if alertname else ""
    rows = store.query(
        "SELECT fingerprint, any(alertname), any(version), any(label), starts_at_us, min(updated_us), "
        "argMin(annotation_values[indexOf(annotation_names, 'summary')], updated_us) FROM alerts "
        f"WHERE model = '{model}' AND starts_at_us >= {since_us}{name} "
        "GROUP BY fingerprint, starts_at_us ORDER BY min(updated_us)"
    ).rows
    return [AlertRow(str(r[0]), str(r[1]), model, int(r[2]), str(r[3]), int(r[4]), int(r[5]), str(r[6])) for r in rows]


# -- the stories -------------------------------------------------------------------------------------------------------


class _Loop:
    """The processes and traffic the stories share."""

    def __init__(self, *, cli: list[str], run_dir: Path, stable_model_dir: Path, bootstrap: str, store: Any,
                 pid_files: list[Path], step: Callable[[str], None], sql: Callable[[str], None]) -> None:  # fmt: skip
        self.run = uuid.uuid4().hex[:4]
        self.model = f"ranker-{self.run}"
        self.cli, self.bootstrap, self.store, self.pid_files = cli, bootstrap, store, pid_files
        self.step, self.sql = step, sql
        self.dir = run_dir / "closed-loop"
        shutil.rmtree(self.dir, ignore_errors=True)  # an earlier run's copies
        self.base = self.dir / "models" / self.model
        shutil.copytree(stable_model_dir, self.base / "1")
        self.config = self.dir / "models.config"
        self.config.write_text(
            f'model_config_list {{ config {{ name: "{self.model}" base_path: "{self.base}" '
            'model_platform: "tensorflow" model_version_policy { specific { versions: 1 } } '
            'version_labels { key: "stable" value: 1 } } }\n'
        )
        self.weights = self.dir / "canary_weights.json"
        self.weights.write_text("{}\n")
        self.faults = self.dir / "faults.json"
        self.faults.write_text("{}\n")
        self.logs: dict[str, Path] = {}
        self.pacer: Any = None
        self.reader: UpdatesReader | None = None

    def spawn(self, name: str, *args: str) -> None:
        pid, log = self.dir / f"{name}.pid", self.dir / f"{name}.log"
        processes.spawn([*self.cli, *args], pid_file=pid, log_file=log)
        self.pid_files.append(pid)
        self.logs[name] = log

    def start(self) -> None:
        from recwatch.demo import Traffic
        from recwatch.demo_alerting import Pacer

        self.step(
            f"closed loop: model {self.model} (a copy of the demo's ranker v1, labelled stable) served by its own "
            "recwatch serve; recwatch alerter (retrain rules on), trainer and controller as processes"
        )
        cfg = ["--model_config_file", str(self.config)]
        self.spawn("serve", "serve", *cfg, "--canary_weights_file", str(self.weights), "--port", str(GRPC_PORT),
                   "--rest_api_port", "0", "--replica", "demo-loop", "--fault_file", str(self.faults))  # fmt: skip
        self.spawn("alerter", "alerter", "--group", f"demo-loop-{self.run}", *ALERTER_FLAGS)
        self.spawn("trainer", "trainer", *cfg, *TRAINER_FLAGS)
        self.spawn("controller", "controller", *cfg, "--canary_weights_file", str(self.weights), *CONTROLLER_FLAGS)
        for name, log in self.logs.items():
            print(f"{name}: {log}")
        print("demo-only flags: alerter " + " ".join(ALERTER_FLAGS) + "; trainer " + " ".join(TRAINER_FLAGS)
              + "; controller " + " ".join(CONTROLLER_FLAGS))  # fmt: skip
        self.reader = UpdatesReader(self.bootstrap, self.model)
        # everything the traffic thread imports is imported here first: two threads importing TensorFlow at once
        # deadlock on its module locks
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: F401

        import serving.tensors  # noqa: F401

        traffic = Traffic(seed=17, model=self.model, seq_model=None, drift_items=DRIFT_ITEMS)
        traffic.catalog()  # the drift's item catalog, generated once
        self.stable()
        self.pacer = Pacer(f"127.0.0.1:{GRPC_PORT}", self.bootstrap, RATE,
                           traffic=traffic)  # fmt: skip
        self.pacer.start()
        print(
            f"{hms(time.time())} traffic: {RATE:g} Predict calls/s to {self.model}, the shop's feedback on the "
            "ranked items"
        )

    def alive(self) -> None:
        """Raise StoryFailed when one of the loop's processes or the demo's worker is gone (other stories' pid
        files stay in the list after they stopped their processes)."""
        mine = [self.dir / f"{name}.pid" for name in self.logs]
        for pid in mine + [p for p in self.pid_files if p.stem == "worker"]:
            if processes.read(pid) is None:
                log = self.logs.get(pid.stem, pid.with_suffix(".log"))
                raise StoryFailed(f"{pid.stem} exited; see {log}")

    def wait(self, what: str, condition: Callable[[], Any], deadline_s: float) -> Any:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            value = condition()
            if value:
                return value
            self.alive()
            time.sleep(1.0)
        raise StoryFailed(f"{what}: not within {deadline_s:.0f} s")

    def stable(self) -> int:
        from rollout.service import stable_versions

        return stable_versions(self.config)[self.model]

    def close(self) -> None:
        if self.pacer is not None:
            self.pacer.stop()
            print(f"traffic: {self.pacer.counts['sent']} calls, {self.pacer.counts['failed']} failed")
        if self.reader is not None:
            self.reader.close()
        self.faults.write_text("{}\n")


class StoryFailed(Exception):
    """A story did not reach its end state (the message says which step, and where to look)."""


def _print_timeline(title: str, entries: list[Entry], start_s: float) -> None:
    print(f"\n-- timeline: {title} (UTC; elapsed since the story began)")
    for line in timeline_lines(entries, start_s):
        print("  " + line)


def drift_story(loop: _Loop) -> bool:
    assert loop.reader is not None
    loop.step("drift: traffic drifts -> score drift alert -> retrain -> canary -> promoted")
    start_s = time.time()
    marks = [Entry(start_s, "demo", f"story begins: {loop.model} stable v{loop.stable()}, {RATE:g} calls/s")]
    from recwatch.demo import Taste
    from recwatch.demo_alerting import _published_windows

    try:
        since_us = int(start_s * 1e6)
        warm = "10 windows published (the detectors' warm-up)"
        loop.wait(warm, lambda: _published_windows(loop.store, since_us) >= 10, 300)
        taste = Taste(loop.pacer.traffic.catalog())
        loop.pacer.shop.taste = taste
        loop.pacer.traffic.drift = 1.0
        drift_s = time.time()
        marks.append(
            Entry(
                drift_s,
                "demo",
                f"traffic drifts: every candidate from {DRIFT_ITEMS} items of the ranker's training catalog (drift=1); "
                f"shoppers now prefer {len(taste.hot_items)} of them",
            )
        )
        print(f"{hms(drift_s)} drift on")
        [alert] = loop.wait(
            f"{DRIFT_ALERT} on the stable version",
            lambda: [a for a in _alert_rows(loop.store, loop.model, int(drift_s * 1e6) - 20_000_000, DRIFT_ALERT)
                     if a.label == "stable"][:1],
            240,
        )  # fmt: skip
        print(f"{hms(alert.fired_us / 1e6)} FIRING {alert.alertname} fingerprint {alert.fingerprint[:8]}")
        retrain = loop.wait(
            "RETRAIN_REQUESTED by the rules",
            lambda: loop.reader.find(ModelUpdate.RETRAIN_REQUESTED, caused_by=alert.fingerprint),  # type: ignore[union-attr]
            240,
        )
        print(f"{hms(time.time())} RETRAIN_REQUESTED {retrain.update_id[:8]}; the trainer is at work")

        def decided() -> ModelUpdate | None:
            updates = loop.reader.poll()  # type: ignore[union-attr]
            return next((u for u in updates if u.kind in (ModelUpdate.PROMOTED, ModelUpdate.ROLLED_BACK)
                         or (u.kind == ModelUpdate.REJECTED and u.actor == "trainer")), None)  # fmt: skip

        end = loop.wait("the retrained version promoted", decided, DRIFT_DEADLINE_S)
        # the alert as first seen: the table keeps only an alert's latest row once merged, so its firing time is the
        # one read while waiting
        entries = [*marks, alert_entry(alert)]
        entries += loop.reader.entries(start_s)
        _print_timeline("drift", entries, start_s)
        print("\nlineage: " + " -> ".join(lineage(loop.reader.updates(), alert.fingerprint)))
        loop.sql(
            "SELECT ts, version, parent_version AS parent, action, canary_weight AS weight, actor, "
            f"substring(caused_by, 1, 8) AS caused_by FROM deployments FINAL WHERE model = '{loop.model}' ORDER BY ts"
        )
        if end.kind != ModelUpdate.PROMOTED:
            print(f"the story ended with {ModelUpdate.Kind.Name(end.kind)}: {end.reason}")
            print(f"see {loop.logs['trainer']} and {loop.logs['controller']}")
            return False
        print(f"{loop.model} v{end.version} promoted {time.time() - start_s:.0f} s after the story began "
              f"({time.time() - drift_s:.0f} s after the drift)")  # fmt: skip
        return True
    except StoryFailed as exc:
        _print_timeline("drift (incomplete)", marks + loop.reader.entries(start_s), start_s)
        print(f"\nthe drift story did not finish: {exc}; logs: {', '.join(map(str, loop.logs.values()))}")
        return False


def bad_canary_story(loop: _Loop) -> bool:
    from serving.model_repository import list_versions

    assert loop.reader is not None
    loop.step("bad canary: a version with injected latency x5 and 20 % errors -> compared with stable -> rolled back")
    start_s = time.time()
    stable = loop.stable()
    bad = max(list_versions(loop.base)) + 1
    staging = loop.base / f".copy-{bad}"
    shutil.copytree(loop.base / str(stable), staging)
    staging.rename(loop.base / str(bad))
    loop.faults.write_text(
        json.dumps({"model": loop.model, "version": bad, "latency_factor": 5, "error_rate": 0.2}) + "\n"
    )
    marks = [
        Entry(start_s, "demo", f"v{bad} = a copy of stable v{stable}; fault file: v{bad} only, latency x5, 20 % errors")
    ]
    try:
        cmd = [*loop.cli, "update", "deploy", loop.model, "--version", str(bad), "--reason",
               "demo: a version with injected latency and errors"]  # fmt: skip
        print("$ recwatch " + " ".join(cmd[3:]))
        subprocess.run(cmd, check=True)
        deploy = loop.wait(
            "the deploy command on the topic",
            lambda: loop.reader.find(ModelUpdate.DEPLOY_REQUESTED, version=bad),  # type: ignore[union-attr]
            30,
        )
        canary = loop.wait(
            "CANARY_DEPLOYED",
            lambda: loop.reader.find(ModelUpdate.CANARY_DEPLOYED, version=bad) or  # type: ignore[union-attr]
            loop.reader.find(ModelUpdate.REJECTED, caused_by=deploy.update_id),  # type: ignore[union-attr]
            60,
        )  # fmt: skip
        if canary.kind == ModelUpdate.REJECTED:
            raise StoryFailed(f"the deploy was rejected: {canary.reason}")
        end = loop.wait(
            "ROLLED_BACK",
            lambda: next((u for u in loop.reader.poll()  # type: ignore[union-attr]
                          if u.kind in (ModelUpdate.ROLLED_BACK, ModelUpdate.PROMOTED) and u.version == bad), None),
            BAD_CANARY_DEADLINE_S,
        )  # fmt: skip
        _print_timeline("bad canary", marks + loop.reader.entries(start_s), start_s)
        loop.sql(
            "SELECT ts, version, parent_version AS parent, action, canary_weight AS weight, reason FROM deployments "
            f"FINAL WHERE model = '{loop.model}' AND version = {bad} ORDER BY ts"
        )
        if end.kind != ModelUpdate.ROLLED_BACK:
            print(f"v{bad} was promoted: the comparison missed the fault; see {loop.logs['controller']}")
            return False
        n = windows_until(canary.ts_us, end.ts_us, WINDOW_S)
        at = dict((u.update_id, t) for t, u in loop.reader.records)
        print(
            f"v{bad} rolled back on the {n}{_ordinal(n)} {WINDOW_S} s window after it went live as canary "
            f"(window {hms(end.ts_us / 1e6)}), {at[end.update_id] - at[canary.update_id]:.0f} s after "
            f"CANARY_DEPLOYED; stable v{loop.stable()} serves alone again"
        )
        return True
    except (StoryFailed, subprocess.CalledProcessError) as exc:
        _print_timeline("bad canary (incomplete)", marks + loop.reader.entries(start_s), start_s)
        print(f"\nthe bad-canary story did not finish: {exc}; logs: {', '.join(map(str, loop.logs.values()))}")
        return False
    finally:
        loop.faults.write_text("{}\n")


def _ordinal(n: int) -> str:
    return "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")


def closed_loop_stories(
    stories: Sequence[str],
    *,
    cli: list[str],
    run_dir: Path,
    stable_model_dir: Path,
    bootstrap: str,
    store_url: str,
    pid_files: list[Path],
    step: Callable[[str], None],
    sql: Callable[[str], None],
) -> bool:
    """Run ``stories`` (``drift``, ``bad-canary``) in order on one served model; True when each reached its end."""
    from store import open_store

    store = open_store(store_url)
    store.connect()
    loop = _Loop(cli=cli, run_dir=run_dir, stable_model_dir=stable_model_dir, bootstrap=bootstrap, store=store,
                 pid_files=pid_files, step=step, sql=sql)  # fmt: skip
    results: dict[str, bool] = {}
    try:
        loop.start()
        for story in stories:
            results[story] = {"drift": drift_story, "bad-canary": bad_canary_story}[story](loop)
    finally:
        loop.close()
        store.close()
    print("\n" + ", ".join(f"{name}: {'done' if ok else 'FAILED'}" for name, ok in results.items()))
    return len(results) == len(stories) and all(results.values())
