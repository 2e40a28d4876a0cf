"""Alert latency benchmark: MQTT publish → ingest → rule → COMMIT → SSE event, under load.

Run:  .venv/bin/python bench/alerts.py [--probes 400] [--warmup 5] [--load 5000] [--rate-messages 100000] [--rate-repeats 3]

It prints a table and, as its last line, one JSON object. It is not a test: it exits 0 and
reports what it measured.

What is measured, all in one run on the same broker, database and machine
-------------------------------------------------------------------------
* ``sse_latency_p50_ms`` / ``sse_latency_p99_ms``: a probe sensor has a threshold rule
  (> 100, clears below 50, no hold). The probe publishes a breaching reading (QoS 1) and
  waits for the alert's ``raised`` event on ``GET /alerts/stream`` (a real SSE client on the
  real API); then a clearing reading and its ``resolved`` event. Latency = event received −
  publish call, so it covers the broker, ingest's batch, the COMMIT that stores the reading
  and the alert together, NOTIFY, and the API's stream. The first ``--warmup`` probes (5) are
  not counted: the first alert a worker raises costs it ~80 ms of one-time work (the session's
  plans of the dispatch functions, the engine's first look at the sensor).
* ``sse_publish_to_txn_*`` / ``sse_txn_to_sse_*``: the same latency split at the start of the
  transaction that wrote the reading (the alert event's ``at``, ``now()`` in that transaction):
  broker + ingest batching and preparing, then the transaction, COMMIT, NOTIFY and the stream.
* ``relay_p99_ms`` (the floor): at the same background load, a bare Python subscriber
  (paho, in its own process) republishes each probe message; latency = publish → the probe
  receives the copy. Same broker, same QoS 1. Its probes alternate with the SSE probes (one
  after each raising probe), so both are measured under the same load at the same moments:
  the machine's good and bad spells fall on both alike.
* Background load: ``--load`` readings/s (1 reading per message, QoS 1, 20 devices, paced in
  10 ms slices) to ``cim/v1/bench/…`` during the latency measurement, each device a
  ``mosquitto_pub`` process (see ``role_load``). ``background_readings_per_s_stored`` is the
  load the system really took: load readings received during the measurement and stored, per s.
* ``readings_per_s_no_rules`` / ``readings_per_s_1000_rules``: ``bench/ingest.py --phases
  single`` (its backlog-drain method; see its docstring) without rules and with ``--rules
  1000`` threshold rules on the same sensors (the first 10 fire and stay active), alternated
  ``--rate-repeats`` times (default 3); each figure is the median of its runs, and
  ``rules_rate_ratio`` their ratio. A single drain of 100,000 messages lasts a few seconds,
  which one spell of the machine's noise can halve; ``*_runs`` lists every run.

Targets (issue 5): SSE p99 < 150 ms and within 5× the relay's p99; the 1,000-rule ingest
rate at least 80 % of the rate without rules.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
VENDOR = "bench"
LOAD_DEVICES = 20


def log(msg: str) -> None:
    print(f"[alerts-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _client(client_id: str, *, max_inflight: int = 20):
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from cimtwin.settings import Settings
    ep = Settings().mqtt
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    if ep.username:
        client.username_pw_set(ep.username, ep.password)
    client.max_inflight_messages_set(max_inflight)
    client.connect(ep.host, ep.port, keepalive=30)
    return client


# --- child roles ----------------------------------------------------------------------------------

def role_load(a) -> None:
    """Publishes ``rate`` 1-reading messages per second (QoS 1, paced in 10 ms slices) until killed.

    Each load device is one ``mosquitto_pub -l`` process (the broker project's C client) that
    publishes every line this process writes to its stdin. A paho publisher doing the same took
    about half of one of the machine's two cores, which the system under test then lacked; real
    devices publish from their own hardware. When this process ends, the clients read EOF and exit.
    """
    from cimtwin.settings import Settings
    ep = Settings().mqtt
    login = ["-u", ep.username, "-P", ep.password] if ep.username else []
    pipes = [subprocess.Popen(["mosquitto_pub", "-h", ep.host, "-p", str(ep.port), "-V", "mqttv5", "-q", "1", "-l",
                               "-i", f"{a.client_id}-{d}", "-t", f"cim/v1/{VENDOR}/l{d:03d}/up", *login],
                              stdin=subprocess.PIPE).stdin for d in range(LOAD_DEVICES)]
    t0 = datetime.now(timezone.utc) - timedelta(hours=2)
    i, start = 0, time.monotonic()
    while True:
        due = int((time.monotonic() - start) * a.rate)
        while i < due:
            t = (t0 + timedelta(milliseconds=i)).isoformat()
            pipes[i % LOAD_DEVICES].write(b'{"readings": [{"channel": "v", "value": %d, "time": "%s"}]}\n'
                                          % (i % 50, t.encode()))
            i += 1
        for pipe in pipes:
            pipe.flush()
        time.sleep(0.01)


def role_relay(a) -> None:
    """Republishes every message on cimtwin/bench/relay/in to cimtwin/bench/relay/out (QoS 1)."""
    client = _client(a.client_id)
    client.on_message = lambda c, u, m: c.publish("cimtwin/bench/relay/out", m.payload, qos=1)
    client.subscribe("cimtwin/bench/relay/in", qos=1)
    client.loop_forever()


# --- the run ----------------------------------------------------------------------------------------

class RelayProbe:
    """The floor: a bare paho subscriber in its own process republishes each probe message;
    one round trip is publish → the copy back, on the same broker at QoS 1."""

    def __init__(self, run: Run):
        self.proc = run.child("relay", client_id=f"bench-alerts-relay-{run.run_id}")
        time.sleep(1.0)
        self.got = threading.Condition()
        self.received: list[float] = []
        self.client = _client(f"bench-alerts-relayprobe-{run.run_id}")

        def on_message(c, u, m):
            with self.got:
                self.received.append(time.monotonic())
                self.got.notify_all()
        self.client.on_message = on_message
        self.client.subscribe("cimtwin/bench/relay/out", qos=1)
        self.client.loop_start()
        time.sleep(0.5)

    def round_trip(self) -> float | None:
        """One round trip in ms; None if the copy did not come back within 10 s."""
        with self.got:
            seen = len(self.received)
        sent = time.monotonic()
        self.client.publish("cimtwin/bench/relay/in", b"x", qos=1)
        with self.got:
            if self.got.wait_for(lambda: len(self.received) > seen, timeout=10):
                return (self.received[seen] - sent) * 1000
        return None

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
        self.proc.kill()


class Run:
    def __init__(self, args):
        from cimtwin.settings import Settings
        self.args = args
        self.run_id = uuid.uuid4().hex[:6]
        base = Settings()
        parts = urlsplit(base.database_url)
        self.admin_url = urlunsplit(parts._replace(path="/postgres"))
        self.db_url = urlunsplit(parts._replace(path=f"/{args.database}"))
        self.settings = base.model_copy(update={
            "database_url": self.db_url, "api_port": args.api_port,
            "ingest_client_id": f"bench-alerts-{self.run_id}", "ingest_session_expiry_s": 60,
            "admin_api_key": None})
        self.procs: list[subprocess.Popen] = []
        self.key = f"bench-{uuid.uuid4().hex}"
        self.notes: list[str] = []
        self.split: dict[str, list[float]] = {"publish_to_txn": [], "txn_to_sse": []}

    def child(self, role: str, **kw) -> subprocess.Popen:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", role]
        for k, v in kw.items():
            cmd += [f"--{k.replace('_', '-')}", str(v)]
        proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def service(self, command: str) -> subprocess.Popen:
        from pydantic import SecretStr

        from cimtwin.settings import settings_env
        env = settings_env(self.settings.model_copy(update={"admin_api_key": SecretStr(self.key)}))
        proc = subprocess.Popen([sys.executable, "-m", "cimtwin.cli", command], env=env, cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(proc)
        return proc

    def setup(self) -> int:
        import psycopg

        from cimtwin.store.migrate import migrate
        with psycopg.connect(self.admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.args.database}" WITH (FORCE)')
            admin.execute(f'CREATE DATABASE "{self.args.database}" TEMPLATE cimtwin_template')
        migrate(self.db_url)
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            vendor = conn.execute("INSERT INTO vendors (code, name) VALUES (%s, 'Bench') RETURNING id",
                                  (VENDOR,)).fetchone()[0]
            probe = None
            for ext_id in ["probe"] + [f"l{d:03d}" for d in range(LOAD_DEVICES)]:
                device = conn.execute("INSERT INTO devices (vendor_id, ext_id) VALUES (%s, %s) RETURNING id",
                                      (vendor, ext_id)).fetchone()[0]
                sensor = conn.execute("INSERT INTO sensors (device_id, channel, quantity, unit) "
                                      "VALUES (%s, 'v', 'x', '1') RETURNING id", (device,)).fetchone()[0]
                probe = probe or sensor
            conn.execute("""INSERT INTO alert_rules (name, kind, condition, scope, severity)
                            VALUES ('probe high', 'threshold', %s, %s, 'critical')""",
                         (json.dumps({"op": ">", "value": 100, "clear_value": 50, "hold_s": 0}),
                          json.dumps({"sensor_id": probe})))
        return probe

    def latencies(self) -> tuple[list[float], list[float]]:
        """(SSE latencies, relay round trips) in ms: each raising probe is followed by a relay
        round trip, so both see the same load at the same moments."""
        import httpx
        events: dict[str, list[float]] = {"raised": [], "resolved": []}
        txn_starts: dict[str, list[float]] = {"raised": [], "resolved": []}  # the event's `at`: its transaction's start
        arrived = threading.Condition()
        stop = threading.Event()
        url = f"http://127.0.0.1:{self.args.api_port}/alerts/stream"

        def listen():
            with httpx.Client(timeout=None) as http, http.stream("GET", url, headers={"X-API-Key": self.key}) as r:
                for line in r.iter_lines():
                    if stop.is_set():
                        return
                    if line.startswith("data:"):
                        event = json.loads(line[5:])["event"]
                        got = time.monotonic()
                        with arrived:
                            events.setdefault(event["action"], []).append(got)
                            txn_starts.setdefault(event["action"], []).append(
                                datetime.fromisoformat(event["at"].replace("Z", "+00:00")).timestamp())
                            arrived.notify_all()

        listener = threading.Thread(target=listen, daemon=True)
        listener.start()
        relay = RelayProbe(self)
        client = _client(f"bench-alerts-probe-{self.run_id}")
        client.loop_start()
        latencies, relayed, relay_misses = [], [], 0
        t = datetime.now(timezone.utc) - timedelta(minutes=1)
        warmup = self.args.warmup * 2
        for i in range(warmup + self.args.probes * 2):
            action = "raised" if i % 2 == 0 else "resolved"
            value = 150 if action == "raised" else 0
            t += timedelta(milliseconds=10)
            with arrived:
                seen = len(events[action])
            sent, sent_wall = time.monotonic(), time.time()
            client.publish(f"cim/v1/{VENDOR}/probe/up", json.dumps(
                {"readings": [{"channel": "v", "value": value, "time": t.isoformat()}]}), qos=1)
            with arrived:
                ok = arrived.wait_for(lambda: len(events[action]) > seen, timeout=10)
            if not ok:
                self.notes.append(f"probe {i}: no {action} event within 10 s")
                continue
            if action == "raised" and i < warmup:
                relay.round_trip()
            elif action == "raised":
                latencies.append((events[action][seen] - sent) * 1000)
                # publish → the writing transaction's start (broker, batching, prepare, queue), and the rest
                self.split["publish_to_txn"].append((txn_starts[action][seen] - sent_wall) * 1000)
                self.split["txn_to_sse"].append(latencies[-1] - self.split["publish_to_txn"][-1])
                if relay_misses < 3:
                    time.sleep(0.025)
                    trip = relay.round_trip()
                    if trip is None:
                        relay_misses += 1
                        if relay_misses == 3:
                            self.notes.append("relay: 3 probes got no copy within 10 s; gave up")
                    else:
                        relayed.append(trip)
            time.sleep(0.05)
        stop.set()
        client.loop_stop()
        client.disconnect()
        relay.close()
        return latencies, relayed

    def stored_rate(self, start: datetime, end: datetime) -> float:
        """Load readings received in [start, end) and stored, per second: the load the system really had."""
        import psycopg
        with psycopg.connect(self.db_url) as conn:
            n = conn.execute("""SELECT count(*) FROM readings r JOIN sensors s ON s.id = r.sensor_id
                                JOIN devices d ON d.id = s.device_id
                                WHERE d.ext_id <> 'probe' AND r.received_at >= %s AND r.received_at < %s""",
                             (start, end)).fetchone()[0]
        return round(n / (end - start).total_seconds())

    def ingest_rate(self, rules: int) -> dict:
        out = subprocess.run([sys.executable, str(ROOT / "bench" / "ingest.py"), "--phases", "single",
                              "--workers", "1", "--messages", str(self.args.rate_messages), "--wait-idle", "0",
                              "--rules", str(rules), "--database", f"{self.args.database}_rate"],
                             cwd=ROOT, capture_output=True, text=True, timeout=900)
        line = [ln for ln in out.stdout.splitlines() if ln.startswith("{")][-1]
        return json.loads(line)

    def run(self) -> dict:
        a = self.args
        res: dict = {}
        self.setup()
        self.service("serve")
        self.service("ingest")
        import httpx
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{a.api_port}/health", timeout=1).status_code in (200, 503):
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        time.sleep(2)  # the ingest worker subscribes
        load = self.child("load", client_id=f"bench-alerts-load-{self.run_id}", rate=a.load)
        time.sleep(2)
        log(f"background load: {a.load} readings/s")
        started = datetime.now(timezone.utc)
        sse, relay = self.latencies()
        res["background_measured"] = self.stored_rate(started, datetime.now(timezone.utc))
        log(f"SSE: {len(sse)} raised events, p50 {pct(sse, 0.5)} ms, p99 {pct(sse, 0.99)} ms")
        log(f"relay: {len(relay)} round trips, p50 {pct(relay, 0.5)} ms, p99 {pct(relay, 0.99)} ms")
        load.kill()
        res["sse"], res["relay"] = sse, relay
        self.stop_services()
        for _ in range(a.rate_repeats):
            for rules in (0, 1000):
                rate = self.ingest_rate(rules)["canonical_1_readings_per_s"]
                res.setdefault(f"rates_{rules}", []).append(rate)
                log(f"ingest with {rules} rules: {rate} readings/s")
        return res

    def stop_services(self) -> None:
        """Stops the API and the ingest worker, and ends the worker's persistent session: left to
        expire, it would queue every message the rate runs publish (200,000), and the broker would
        then write them all to disk at each autosave, stalling for that long."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        client = _client(self.settings.ingest_client_id)  # clean start, session expiry 0
        client.loop(1.0)  # its CONNACK
        client.disconnect()

    def cleanup(self) -> None:
        import psycopg
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        with psycopg.connect(self.admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.args.database}" WITH (FORCE)')


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 1)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        p = argparse.ArgumentParser()
        p.add_argument("role")
        p.add_argument("--client-id")
        p.add_argument("--rate", type=float, default=5000)
        a = p.parse_args(sys.argv[2:])
        {"load": role_load, "relay": role_relay}[a.role](a)
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--probes", type=int, default=400)
    p.add_argument("--warmup", type=int, default=5,
                   help="probes (and relay round trips) sent first and not counted: each process's first "
                        "alert pays one-time costs (plans, caches)")
    p.add_argument("--load", type=float, default=5000)
    p.add_argument("--rate-messages", type=int, default=100_000)
    p.add_argument("--rate-repeats", type=int, default=3, help="alternated ingest-rate runs with and without rules")
    p.add_argument("--api-port", type=int, default=8765)
    p.add_argument("--database", default="cimtwin_bench_alerts")
    args = p.parse_args()
    run = Run(args)
    res: dict = {}
    try:
        res = run.run()
    except Exception as exc:  # a bench reports what it could measure
        run.notes.append(f"bench aborted: {type(exc).__name__}: {exc}")
    finally:
        run.cleanup()
    sse, relay = res.get("sse", []), res.get("relay", [])
    runs0, runs1000 = res.get("rates_0", []), res.get("rates_1000", [])
    r0 = round(statistics.median(runs0)) if runs0 else None
    r1000 = round(statistics.median(runs1000)) if runs1000 else None
    out = {
        "sse_latency_p50_ms": pct(sse, 0.50), "sse_latency_p99_ms": pct(sse, 0.99),
        "relay_p50_ms": pct(relay, 0.50), "relay_p99_ms": pct(relay, 0.99),
        "sse_samples": len(sse), "relay_samples": len(relay),
        "background_readings_per_s": args.load,
        "background_readings_per_s_stored": res.get("background_measured"),
        "readings_per_s_no_rules": r0, "readings_per_s_1000_rules": r1000,
        "rules_rate_ratio": round(r1000 / r0, 3) if r0 and r1000 else None,
        "readings_per_s_no_rules_runs": runs0, "readings_per_s_1000_rules_runs": runs1000,
        "notes": run.notes,
    }
    for part, values in run.split.items():
        out[f"sse_{part}_p50_ms"], out[f"sse_{part}_p99_ms"] = pct(values, 0.50), pct(values, 0.99)
    out["sse_latency_p90_ms"] = pct(sse, 0.90)
    if sse and relay:
        out["sse_p99_vs_relay_p99"] = round(out["sse_latency_p99_ms"] / out["relay_p99_ms"], 2)
    print(f"\nalert latency under {args.load:.0f} readings/s: SSE p50 {out['sse_latency_p50_ms']} ms, "
          f"p99 {out['sse_latency_p99_ms']} ms (target < 150, <= 5x relay); relay p50 {out['relay_p50_ms']} ms, "
          f"p99 {out['relay_p99_ms']} ms; mean SSE {statistics.fmean(sse) if sse else 0:.1f} ms")
    print(f"ingest, 1 reading/msg (median of {len(runs0)}): {r0} readings/s without rules, {r1000} with 1,000 "
          f"rules (ratio {out['rules_rate_ratio']}, target >= 0.8)")
    for note in run.notes:
        print(f"NOTE: {note}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
