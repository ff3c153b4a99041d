"""The customer's Modbus TCP interface: what it serves, and what a BMS costs the agent.

Real processes on loopback (bench.harness: dh-sim, Mosquitto, dh-agent run with the live
snapshot) plus `dh-agent customer`. Figures:

* ``bms_req_s``: read requests per second the interface answers (8 clients, each one
  request at a time, reading the 28 heat-meter registers; the config's rate bound
  ``max_requests_s`` lifted to 10000 for this figure; the shipped default is 50);
* ``agent_cpu_h_s`` without / with a BMS polling every second (4 reads a second: header,
  heat meter, limiter, last record), the agent's CPU seconds per hour, in alternating
  windows of ``--window`` s (ABBA order) so both see the same machine load;
* ``agent_cpu_ratio``: with / without (target <= 1.05): the agent does not notice the BMS,
  it only writes its snapshot as always;
* ``customer_cpu_h_s``: the customer process's own CPU per hour while the BMS polls.

Last line JSON: ``{"bms_req_s": .., "agent_cpu_ratio": .., ...}``.

    python -m bench.customer [--window 60] [--rounds 4]
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import subprocess
import threading
import time

from bench.harness import BIN, Rig, free_port, proc_cpu_s, wait_port

READS = ((0, 10), (100, 28), (300, 18), (400, 21))


def request(s: socket.socket, tid: int, addr: int, count: int) -> None:
    s.sendall(struct.pack(">HHHBBHH", tid & 0xFFFF, 0, 6, 1, 4, addr, count))
    need = 9 + 2 * count
    got = b""
    while len(got) < need:
        chunk = s.recv(need - len(got))
        if not chunk:
            raise ConnectionError("closed")
        got += chunk
    if got[7] & 0x80:
        raise RuntimeError(f"exception {got[8]}")


def bms(port: int, stop: threading.Event) -> None:
    """A BMS: every second the four blocks, on one connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        tid = 0
        nxt = time.monotonic()
        while not stop.is_set():
            for a, c in READS:
                tid += 1
                request(s, tid, a, c)
            nxt += 1.0
            stop.wait(max(0.0, nxt - time.monotonic()))


def throughput(port: int, seconds: float = 5.0, clients: int = 8) -> float:
    counts = [0] * clients
    end = time.monotonic() + seconds

    def run(i: int) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            while time.monotonic() < end:
                request(s, counts[i], 100, 28)
                counts[i] += 1

    ts = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    t0 = time.monotonic()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sum(counts) / (time.monotonic() - t0)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--window", type=float, default=60.0)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    with Rig(period_s=60) as rig:
        port = free_port()
        with rig.config.open("a") as f:
            f.write(
                f'\n[customer]\nenabled = true\nlisten = "127.0.0.1:{port}"\n'
                "max_requests_s = 10000\nmax_connections = 16\n"
            )
        agent = rig.start_agent()
        cust = subprocess.Popen(
            [str(BIN / "dh-agent"), "customer", "--config", str(rig.config)],
            stdout=(rig.work / "customer.log").open("ab"),
            stderr=subprocess.STDOUT,
        )
        try:
            wait_port(port, 30)
            time.sleep(10)  # the agent settles (start-up, first snapshot)
            req_s = throughput(port)
            time.sleep(3)
            quiet: list[float] = []
            busy: list[float] = []
            cust_busy = 0.0
            for rnd in range(args.rounds):
                # ABBA order: a slow drift of the machine's load falls on both equally
                for busy_now in (False, True) if rnd % 2 == 0 else (True, False):
                    stop = threading.Event()
                    th = threading.Thread(target=bms, args=(port, stop))
                    c0, k0 = proc_cpu_s(agent.pid), proc_cpu_s(cust.pid)
                    if busy_now:
                        th.start()
                    time.sleep(args.window)
                    stop.set()
                    if busy_now:
                        th.join(10)
                        busy.append(proc_cpu_s(agent.pid) - c0)
                        cust_busy += proc_cpu_s(cust.pid) - k0
                    else:
                        quiet.append(proc_cpu_s(agent.pid) - c0)
        finally:
            cust.terminate()
            cust.wait(10)
    span = args.window * args.rounds
    q, b = sum(quiet) / span * 3600, sum(busy) / span * 3600
    out = {
        "bms_req_s": round(req_s, 1),
        "agent_cpu_ratio": round(b / q, 3) if q > 0 else None,
        "agent_cpu_h_s_quiet": round(q, 1),
        "agent_cpu_h_s_bms": round(b, 1),
        "customer_cpu_h_s_bms": round(cust_busy / span * 3600, 1),
        "window_s": args.window,
        "rounds": args.rounds,
    }
    print(f"interface answers {out['bms_req_s']} requests/s (8 clients, 28 registers each)")
    print(f"agent CPU per hour: {q:.1f} s quiet, {b:.1f} s with a BMS polling every second")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
