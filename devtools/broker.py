"""A local single-node Apache Kafka broker (KRaft) for development, tests, demo, benchmarks.

The broker jars come from Maven Central through `mvn` (kafka/pom.xml) and are cached
under ``.cache/kafka/<version>/jars`` (or ``$DETECTOR_KAFKA_CACHE``). `LocalKafka`
formats a KRaft storage directory with a random cluster id and starts one combined
broker+controller on 127.0.0.1 on free ports (or on `host` inside the network namespace
`netns`: tests/netns.py), waits until it answers, and stops it with SIGTERM (then
SIGKILL). `restart()` keeps the ports and the data, so topics and
committed offsets survive, as in a real broker restart.

    python -m devtools.broker fetch                 # only download the jars
    python -m devtools.broker start [--dir DIR]     # run until SIGTERM/SIGINT
"""

from __future__ import annotations

import argparse
import atexit
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

KAFKA_VERSION = "4.3.1"
REPO_ROOT = Path(__file__).resolve().parents[1]
POM = REPO_ROOT / "kafka" / "pom.xml"
LOG4J = REPO_ROOT / "kafka" / "log4j2.properties"
READY_DEADLINE_S = 90.0
CLONE_NEWNET = 0x40000000


class KafkaLauncherError(RuntimeError):
    """The local broker could not be fetched, formatted or started."""


def cache_dir() -> Path:
    root = os.environ.get("DETECTOR_KAFKA_CACHE")
    base = Path(root) if root else REPO_ROOT / ".cache" / "kafka"
    return base / KAFKA_VERSION / "jars"


def ensure_jars(jars: Path | None = None) -> Path:
    """The folder of broker jars, downloaded with mvn on first use (marker-file guarded)."""
    jars = jars or cache_dir()
    marker = jars / ".complete"
    if marker.exists():
        return jars
    for tool in ("mvn", "java"):
        if shutil.which(tool) is None:
            msg = f"`{tool}` is not on the PATH: the local Kafka broker needs Java 17+ and Maven"
            raise KafkaLauncherError(msg)
    if jars.exists():
        shutil.rmtree(jars)  # a half-finished copy from an interrupted run
    jars.mkdir(parents=True)
    result = subprocess.run(
        ["mvn", "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
         f"-DoutputDirectory={jars}", "-DincludeScope=runtime"],
        capture_output=True, text=True, check=False,
    )
    if result.returncode != 0 or not any(jars.glob("kafka_2.13-*.jar")):
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
        msg = f"mvn could not fetch the Kafka {KAFKA_VERSION} jars:\n{tail}"
        raise KafkaLauncherError(msg)
    marker.write_text(KAFKA_VERSION)
    return jars


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class BrokerTls:
    """PEM files for the broker's TLS listeners: the CA that signed the client
    certificates (and the server's), the server certificate (SAN IP:127.0.0.1) and its
    unencrypted PKCS#8 key."""

    cafile: Path
    certfile: Path
    keyfile: Path


def _listener(host: str, port: int | None, needs: str) -> str:
    if port is None:
        msg = f"this broker was started without {needs}"
        raise KafkaLauncherError(msg)
    return f"{host}:{port}"


def enter_netns(name: str) -> None:
    """Move the calling thread into the network namespace /run/netns/NAME (setns(2));
    sockets it creates from then on belong to that namespace, whichever thread uses them."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


class LocalKafka:
    """One broker+controller process; a context manager, and `stop()` is idempotent."""

    def __init__(self, work_dir: Path | None = None, heap: str = "1g",
                 extra_properties: dict[str, str] | None = None,
                 scram_users: dict[str, str] | None = None,
                 tls: BrokerTls | None = None, *, host: str = "127.0.0.1",
                 netns: str | None = None) -> None:
        """`scram_users` (name -> password) adds a SASL_PLAINTEXT listener accepting
        SCRAM-SHA-256, SCRAM-SHA-512 and PLAIN for those users (`sasl_bootstrap_servers`).
        `tls` adds an SSL listener that requires a client certificate signed by
        `tls.cafile` (`ssl_bootstrap_servers`), and with `scram_users` also a SASL_SSL
        listener without client certificates (`sasl_ssl_bootstrap_servers`). `netns`
        runs the broker with `ip netns exec NETNS`, listening and advertising `host` (an
        address of that namespace)."""
        self.host = host
        self.netns = netns
        self.work_dir = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="kafka-"))
        self.heap = heap
        self.extra_properties = extra_properties or {}
        self.port = free_port()
        self.controller_port = free_port()
        self.scram_users = scram_users or {}
        self.sasl_port = free_port() if self.scram_users else None
        self.tls = tls
        self.ssl_port = free_port() if tls else None
        self.sasl_ssl_port = free_port() if tls and self.scram_users else None
        self._proc: subprocess.Popen[bytes] | None = None
        self._formatted = False
        self._lock = threading.Lock()

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def sasl_bootstrap_servers(self) -> str:
        return _listener(self.host, self.sasl_port, "scram_users")

    @property
    def ssl_bootstrap_servers(self) -> str:
        return _listener(self.host, self.ssl_port, "tls")

    @property
    def sasl_ssl_bootstrap_servers(self) -> str:
        return _listener(self.host, self.sasl_ssl_port, "tls and scram_users")

    @property
    def log_path(self) -> Path:
        return self.work_dir / "broker.log"

    def _properties(self) -> Path:
        h = self.host
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"{h}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{h}:{self.port},CONTROLLER://{h}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{h}:{self.port},"
                                    f"CONTROLLER://{h}:{self.controller_port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.work_dir / "data"),
            "num.partitions": "1",
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "log.cleaner.enable": "true",
            "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
        }
        listeners = []
        if self.sasl_port is not None:
            listeners.append(("SASL_PLAINTEXT", self.sasl_port))
        if self.ssl_port is not None:
            listeners.append(("SSL", self.ssl_port))
        if self.sasl_ssl_port is not None:
            listeners.append(("SASL_SSL", self.sasl_ssl_port))
        for protocol, port in listeners:
            props["listeners"] += f",{protocol}://{h}:{port}"
            props["advertised.listeners"] += f",{protocol}://{h}:{port}"
            props["listener.security.protocol.map"] += f",{protocol}:{protocol}"
            name = protocol.lower()
            if protocol.startswith("SASL"):
                props["sasl.enabled.mechanisms"] = "SCRAM-SHA-256,SCRAM-SHA-512,PLAIN"
                scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
                props[f"listener.name.{name}.scram-sha-256.sasl.jaas.config"] = scram
                props[f"listener.name.{name}.scram-sha-512.sasl.jaas.config"] = scram
                users = " ".join(f'user_{u}="{pw}"' for u, pw in self.scram_users.items())
                props[f"listener.name.{name}.plain.sasl.jaas.config"] = (
                    f"org.apache.kafka.common.security.plain.PlainLoginModule required {users};")
            if protocol.endswith("SSL"):
                props[f"listener.name.{name}.ssl.client.auth"] = (
                    "required" if protocol == "SSL" else "none")
        if self.tls is not None:
            keystore = self.work_dir / "broker-keystore.pem"  # key and chain in one file
            keystore.write_text(self.tls.keyfile.read_text() + self.tls.certfile.read_text())
            props["ssl.keystore.type"] = "PEM"
            props["ssl.keystore.location"] = str(keystore)
            props["ssl.truststore.type"] = "PEM"
            props["ssl.truststore.location"] = str(self.tls.cafile)
        props.update(self.extra_properties)
        path = self.work_dir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        return path

    def _java(self, jars: Path, *args: str) -> list[str]:
        return ["java", f"-Dlog4j2.configurationFile={LOG4J}", "-cp", f"{jars}/*", *args]

    def _format(self, jars: Path, properties: Path) -> None:
        cluster_id = subprocess.run(
            self._java(jars, "kafka.tools.StorageTool", "random-uuid"),
            capture_output=True, text=True, check=True,
        ).stdout.strip().splitlines()[-1]
        scram = [arg for user, pw in self.scram_users.items()
                 for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512")
                 for arg in ("--add-scram", f"{mechanism}=[name={user},password={pw}]")]
        result = subprocess.run(
            self._java(jars, "kafka.tools.StorageTool", "format", "-t", cluster_id,
                       "-c", str(properties), "--standalone", *scram),
            capture_output=True, text=True, check=False,
        )
        if result.returncode != 0:
            msg = f"formatting the KRaft storage failed:\n{result.stdout}{result.stderr}"
            raise KafkaLauncherError(msg)
        self._formatted = True

    def start(self) -> LocalKafka:
        with self._lock:
            if self._proc is not None:
                return self
            jars = ensure_jars()
            self.work_dir.mkdir(parents=True, exist_ok=True)
            properties = self._properties()
            if not self._formatted:
                shutil.rmtree(self.work_dir / "data", ignore_errors=True)  # a previous run's
                self._format(jars, properties)
            log = self.log_path.open("ab")
            netns = ["ip", "netns", "exec", self.netns] if self.netns else []
            self._proc = subprocess.Popen(
                [*netns, "java", f"-Xms{self.heap}", f"-Xmx{self.heap}", "-XX:+UseG1GC",
                 *self._java(jars, "kafka.Kafka", str(properties))[1:]],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
            log.close()
            atexit.register(self.stop)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        """Poll the listener and a metadata request until the broker answers."""
        deadline = time.monotonic() + READY_DEADLINE_S
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                msg = f"the broker exited with {self._proc.returncode}:\n{self._tail()}"
                raise KafkaLauncherError(msg)
            if self._answers_here():
                return
            time.sleep(0.2)
        self.stop()
        msg = f"the broker did not answer within {READY_DEADLINE_S:.0f}s:\n{self._tail()}"
        raise KafkaLauncherError(msg)

    def _answers(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1):
                pass
        except OSError:
            return False
        return _metadata_ok(self.bootstrap_servers)

    def _answers_here(self) -> bool:
        if self.netns is None:
            return self._answers()
        with ThreadPoolExecutor(max_workers=1, initializer=enter_netns,
                                initargs=(self.netns,)) as pool:
            return pool.submit(self._answers).result()

    def stop(self) -> None:
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def restart(self) -> None:
        """Stop and start again on the same ports with the same data."""
        self.stop()
        self.start()

    def _tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no broker log)"

    def __enter__(self) -> LocalKafka:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _metadata_ok(bootstrap: str) -> bool:
    """True when a real client gets cluster metadata (the port alone opens early)."""
    import asyncio

    from aiokafka.admin import AIOKafkaAdminClient

    async def probe() -> bool:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
        try:
            await admin.start()
            await admin.list_topics()
            return True
        except Exception:
            return False
        finally:
            await admin.close()

    # A thread of its own: the caller may already be running an event loop (the demo).
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, probe()).result()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.broker", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch", help="download the broker jars into the cache")
    start = sub.add_parser("start", help="run a broker in the foreground until a signal")
    start.add_argument("--dir", type=Path, default=None, help="work dir (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.command == "fetch":
        print(ensure_jars())
        return 0
    stopped = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopped.set())
    with LocalKafka(work_dir=args.dir) as kafka:
        print(f"BOOTSTRAP={kafka.bootstrap_servers}", flush=True)
        stopped.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
