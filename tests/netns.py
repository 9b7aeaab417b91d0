"""Network namespaces for fault tests: the broker, each detector replica, the embedding
API and the test's own clients each in a namespace of their own, joined by veth pairs
to a bridge in a hub namespace, with faults on the links.

Addresses are 10.231.0.0/24 and exist only inside the namespaces created here (the
host's network is neither changed nor contacted); neighbours are permanent entries, so
a cut link drops packets silently (no ARP failure, no reset). Faults are context
managers bounded in time: a watchdog undoes each after `max_s` even if the test hangs,
and their `finally` undoes it in any case:

* `link_down(node)`: the node's bridge port down, a partition of the node from all;
* `impair(node, delay_ms, jitter_ms, loss)`: egress delay, jitter and loss of the node,
  with `tc netem` when the kernel has it, else with the userspace relay tests/netem.py.

The test process itself stays in the host namespace: `Net.call` runs a function (and
`Net.run` a coroutine on an event loop of its own) in a thread that entered the `ctl`
namespace, so every socket it opens is there. `Net.close` kills the processes started
here and deletes the namespaces, also after a failure (and at exit); namespaces left by
a killed test run (their creator's pid is gone) are swept at the next start.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from devtools.broker import LocalKafka, enter_netns
from devtools.fakeapi import FakeEmbeddingServer
from tests.procs import DetectorProcess

T = TypeVar("T")
SUBNET = "10.231.0"
PREFIX = "nf"  # namespaces are named nf<pid>x<n>-<node>
HOSTS = {"ctl": 2, "broker": 10, "api": 20}
DETECTOR_PORT = 8080
API_PORT = 8000
_counter = 0


def unavailable() -> str | None:
    """Why network-namespace tests cannot run here, or None. Installs iproute2 with
    apt-get when `ip` or `tc` is missing."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if (shutil.which("ip") is None or shutil.which("tc") is None) and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "iproute2"], check=False,
                       capture_output=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if shutil.which("ip") is None:
        return "`ip` (iproute2) is not installed"
    if not Path("/dev/net/tun").exists():
        return "no /dev/net/tun"
    return None


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        msg = f"{' '.join(argv)}: {result.stderr.strip()}"
        raise RuntimeError(msg)
    return result


def sweep_stale() -> None:
    """Delete namespaces of earlier runs whose process is gone."""
    for line in sh("ip", "netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        match = re.fullmatch(rf"{PREFIX}(\d+)x\d+-\w+", name)
        if match and not Path(f"/proc/{match.group(1)}").exists():
            sh("ip", "netns", "del", name, check=False)


@dataclass(frozen=True)
class Node:
    name: str
    ns: str
    addr: str
    mac: str
    port: str  # its veth end on the bridge, in the hub namespace


class Net:
    """The namespaces, the bridge, and the processes started in them."""

    def __init__(self) -> None:
        global _counter  # noqa: PLW0603 - unique names within this process
        _counter += 1
        self.tag = f"{PREFIX}{os.getpid()}x{_counter}"
        self.hub = f"{self.tag}-hub"
        self.nodes: dict[str, Node] = {}
        self.procs: list[subprocess.Popen[bytes]] = []
        self.kafka: LocalKafka | None = None
        self.api: FakeEmbeddingServer | None = None
        self._pools: dict[str, ThreadPoolExecutor] = {}
        self._closed = False
        self.netem_kernel: bool | None = None

    # -- set-up and teardown ---------------------------------------------------------
    def open(self) -> Net:
        sweep_stale()
        atexit.register(self.close)
        try:
            sh("ip", "netns", "add", self.hub)
            self._hub("link", "set", "lo", "up")
            self._hub("link", "add", "br0", "type", "bridge")
            self._hub("link", "set", "br0", "up")
            self.add("ctl")
        except BaseException:
            self.close()
            raise
        return self

    def _hub(self, *argv: str) -> None:
        sh("ip", "-n", self.hub, *argv)

    def add(self, name: str, host: int | None = None) -> Node:
        """A namespace joined to the bridge, with permanent neighbours both ways."""
        host = host if host is not None else HOSTS[name]
        node = Node(name, f"{self.tag}-{name}", f"{SUBNET}.{host}",
                    f"02:00:0a:e7:00:{host:02x}", f"p-{name}")
        sh("ip", "netns", "add", node.ns)
        self._hub("link", "add", node.port, "type", "veth", "peer", "name", "eth0",
                  "netns", node.ns)
        ns = ("ip", "-n", node.ns)
        sh(*ns, "link", "set", "lo", "up")
        sh(*ns, "link", "set", "eth0", "address", node.mac)
        sh(*ns, "addr", "add", f"{node.addr}/24", "dev", "eth0")
        sh(*ns, "link", "set", "eth0", "up")
        self._hub("link", "set", node.port, "master", "br0")
        self._hub("link", "set", node.port, "up")
        sh("ip", "netns", "exec", node.ns, "sh", "-c",
           "for f in /proc/sys/net/ipv4/conf/*/rp_filter; do echo 0 > $f; done")
        for other in self.nodes.values():
            sh(*ns, "neigh", "replace", other.addr, "lladdr", other.mac, "dev", "eth0",
               "nud", "permanent")
            sh("ip", "-n", other.ns, "neigh", "replace", node.addr, "lladdr", node.mac,
               "dev", "eth0", "nud", "permanent")
        self.nodes[name] = node
        return node

    def close(self) -> None:
        """Kill what was started here and delete every namespace (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=30)
        if self.kafka is not None:
            self.kafka.stop()
        if self.api is not None:
            self.api.stop()
        for pool in self._pools.values():
            pool.shutdown(wait=False, cancel_futures=True)
        for node in self.nodes.values():
            sh("ip", "netns", "del", node.ns, check=False)
        sh("ip", "netns", "del", self.hub, check=False)

    def __enter__(self) -> Net:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- running things in namespaces ------------------------------------------------
    def exec_argv(self, node: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.nodes[node].ns, *argv]

    def pool(self, node: str = "ctl") -> ThreadPoolExecutor:
        if node not in self._pools:
            self._pools[node] = ThreadPoolExecutor(
                max_workers=4, initializer=enter_netns, initargs=(self.nodes[node].ns,),
                thread_name_prefix=f"netns-{node}")
        return self._pools[node]

    def call(self, fn: Callable[[], T], node: str = "ctl") -> T:
        """`fn()` in a thread inside the namespace of `node`."""
        return self.pool(node).submit(fn).result()

    def run(self, coro: Coroutine[Any, Any, T], node: str = "ctl") -> T:
        """A coroutine on an event loop of its own inside the namespace of `node`."""
        return self.pool(node).submit(asyncio.run, coro).result()

    async def arun(self, make: Callable[[], Awaitable[T]], node: str = "ctl") -> T:
        async def wrapped() -> T:
            return await make()

        return await asyncio.wrap_future(self.pool(node).submit(asyncio.run, wrapped()))

    def start_broker(self, work_dir: Path, **properties: str) -> LocalKafka:
        node = self.add("broker")
        self.kafka = LocalKafka(work_dir=work_dir, host=node.addr, netns=node.ns,
                                extra_properties=properties)
        self.kafka.start()
        return self.kafka

    @property
    def bootstrap(self) -> str:
        assert self.kafka is not None
        return self.kafka.bootstrap_servers

    def start_api(self, **kwargs: Any) -> FakeEmbeddingServer:
        node = self.add("api")
        server = FakeEmbeddingServer(host=node.addr, port=API_PORT, **kwargs)
        self.call(server.start, "api")  # its server thread inherits the namespace
        self.api = server
        return server

    # -- faults ----------------------------------------------------------------------
    @contextlib.contextmanager
    def _bounded(self, undo: Callable[[], None], max_s: float) -> Iterator[None]:
        timer = threading.Timer(max_s, undo)
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()
            undo()

    @contextlib.contextmanager
    def link_down(self, node: str, max_s: float) -> Iterator[None]:
        """The node's bridge port down for at most `max_s`: it reaches nobody, nobody
        reaches it, and packets vanish without a reset."""
        port = self.nodes[node].port
        try:
            self._hub("link", "set", port, "down")
            with self._bounded(lambda: self._hub("link", "set", port, "up"), max_s):
                yield
        finally:
            self._hub("link", "set", port, "up")

    @contextlib.contextmanager
    def impair(self, node: str, *, delay_ms: float, jitter_ms: float, loss: float,
               max_s: float) -> Iterator[None]:
        """Egress delay ± jitter and loss (a fraction) of `node` for at most `max_s`."""
        n = self.nodes[node]
        netem = sh("ip", "netns", "exec", n.ns, "tc", "qdisc", "add", "dev", "eth0", "root",
                   "netem", "delay", f"{delay_ms}ms", f"{jitter_ms}ms",
                   "loss", f"{loss * 100}%", check=False)
        self.netem_kernel = netem.returncode == 0
        if self.netem_kernel:
            def undo() -> None:
                sh("ip", "netns", "exec", n.ns, "tc", "qdisc", "del", "dev", "eth0", "root",
                   check=False)
            with self._bounded(undo, max_s):
                yield
            return
        relay = subprocess.Popen(
            self.exec_argv(node, [sys.executable, "-m", "tests.netem", "--dev", "eth0",
                                  "--tun", "imp0", "--delay-ms", str(delay_ms),
                                  "--jitter-ms", str(jitter_ms), "--loss", str(loss),
                                  *[f"--neigh={o.addr}={o.mac}"
                                    for o in self.nodes.values() if o is not n]]),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.procs.append(relay)
        subnet = f"{SUBNET}.0/24"

        def restore() -> None:
            sh("ip", "-n", n.ns, "route", "replace", subnet, "dev", "eth0", "proto", "kernel",
               "scope", "link", "src", n.addr, check=False)
            if relay.poll() is None:
                relay.send_signal(signal.SIGTERM)
                try:
                    relay.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    relay.kill()

        try:
            assert relay.stdout is not None
            line = relay.stdout.readline().decode().strip()
            if line != "ready":
                err = relay.stderr.read().decode() if relay.stderr else ""
                msg = f"netem relay failed: {line} {err}"
                raise RuntimeError(msg)
            sh("ip", "-n", n.ns, "route", "replace", subnet, "dev", "imp0", "scope", "link",
               "src", n.addr)
            with self._bounded(restore, max_s):
                yield
        finally:
            restore()


class NetDetector(DetectorProcess):
    """`detector run` inside a node's namespace; probes go through the ctl namespace."""

    def __init__(self, net: Net, node: str, sections: dict[str, Any], log_path: Path) -> None:
        super().__init__(sections, log_path)
        self.net = net
        self.node = node
        self.port = DETECTOR_PORT
        self.env.update({"DETECTOR_SERVER__HOST": "0.0.0.0",
                         "DETECTOR_SERVER__PORT": str(DETECTOR_PORT)})

    def start(self) -> NetDetector:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.net.exec_argv(self.node, [sys.executable, "-m", "detector.cli", "--config",
                                           "config/detector.yaml", "run"]),
            env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.net.procs.append(self.proc)
        return self

    def get(self, path: str) -> tuple[int, str]:
        url = f"http://{self.net.nodes[self.node].addr}:{self.port}{path}"

        def fetch() -> tuple[int, str]:
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    return int(resp.status), str(resp.read().decode())
            except urllib.error.HTTPError as exc:
                return int(exc.code), ""

        return self.net.call(fetch)


def poll(predicate: Callable[[], object], deadline_s: float = 60.0,
         what: str = "condition", every_s: float = 0.2) -> float:
    """Call `predicate` until it is true; returns the seconds it took, fails at the
    deadline."""
    started = time.monotonic()
    while time.monotonic() - started < deadline_s:
        if predicate():
            return time.monotonic() - started
        time.sleep(every_s)
    msg = f"timed out after {deadline_s}s waiting for {what}"
    raise AssertionError(msg)
