"""A userspace `tc netem` for kernels built without sch_netem: egress delay, jitter and
loss of one network namespace, for tests/netns.py.

Run inside the namespace (`ip netns exec NS python -m tests.netem ...`): it creates the
TUN device `--tun`, prints ``ready`` and then forwards every IP packet the kernel routes
into that device out of `--dev` (an AF_PACKET socket, with the Ethernet header built
from the `--neigh IP=MAC` table), after `delay ± jitter` (uniform, so packets may be
reordered, as with netem) or not at all with probability `loss`. The harness routes the
namespace's subnet through the TUN device while the impairment lasts and back through
`--dev` afterwards; the device disappears with this process. SIGTERM ends it.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import heapq
import os
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
ETH_P_IP = 0x0800


def mac_bytes(mac: str) -> bytes:
    return bytes(int(part, 16) for part in mac.split(":"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.netem", description=__doc__)
    parser.add_argument("--dev", required=True)
    parser.add_argument("--tun", required=True)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--loss", type=float, default=0.0, help="fraction, 0..1")
    parser.add_argument("--neigh", action="append", default=[], help="IP=MAC")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    neigh = {socket.inet_aton(ip): mac_bytes(mac)
             for ip, mac in (item.split("=", 1) for item in args.neigh)}
    own = mac_bytes(Path(f"/sys/class/net/{args.dev}/address").read_text().strip())
    mtu = Path(f"/sys/class/net/{args.dev}/mtu").read_text().strip()

    tun = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(tun, TUNSETIFF, struct.pack("16sH", args.tun.encode(), IFF_TUN | IFF_NO_PI))
    subprocess.run(["ip", "link", "set", args.tun, "mtu", mtu, "up"], check=True)
    out = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    out.bind((args.dev, 0))

    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print("ready", flush=True)

    queue: list[tuple[float, int, bytes]] = []
    seq = 0
    delay, jitter = args.delay_ms / 1000, args.jitter_ms / 1000
    while not stopping:
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            _, _, packet = heapq.heappop(queue)
            mac = neigh.get(packet[16:20])
            if mac is not None and packet[0] >> 4 == 4:
                with contextlib.suppress(OSError):  # the link is down: dropped, as on a wire
                    out.send(mac + own + struct.pack("!H", ETH_P_IP) + packet)
        timeout = min(0.05, max(0.0, queue[0][0] - now)) if queue else 0.05
        try:
            ready, _, _ = select.select([tun], [], [], timeout)
        except InterruptedError:
            continue
        if not ready:
            continue
        now = time.monotonic()
        while True:
            try:
                packet = os.read(tun, 65536)
            except BlockingIOError:
                break
            if rng.random() < args.loss:
                continue
            seq += 1
            due = now + max(0.0, delay + rng.uniform(-jitter, jitter))
            heapq.heappush(queue, (due, seq, packet))
    os.close(tun)
    return 0


if __name__ == "__main__":
    sys.exit(main())
