#!/usr/bin/env python3
"""The edge at scale: idle tunnels held by one edge, its memory per tunnel, registrations
per second, its CPU while idle and a request's latency through a simulated tunnel, each
with its baseline from the same run, on loopback.

For each tunnel count (0, the baseline; --small; --tunnels) a fresh release edge starts;
after its RSS is read, `examples/swarm.rs` (one process, many light QUIC connectors
speaking the real protocol, each tunnel with its own token) registers that many tunnels
of --conns connections each, as fast as the edge admits them, then holds them idle.
With the tunnels held it reads:
  reg/s     tunnels registered per second (the swarm's ramp: all connections of all
            tunnels registered, from the first dial to the last `Registered`)
  rss       the edge's VmRSS (/proc/PID/status) and Rss/Anonymous of smaps_rollup, before
            the swarm and once the tunnels are held; (after - before) / tunnels is the
            memory per idle tunnel
  idle cpu  the edge's CPU ticks (utime + stime) over --idle-secs with the tunnels held
            (the connectors' QUIC keep-alives, the edge's timers)
  latency   --requests sequential GETs through tunnel 0 (which serves a 2-byte `ok`) on
            one keep-alive connection with curl, median and p90 of curl's time_total
The swarm then reports how many connections stayed up while idle (none may be lost).

With --pin the edge runs on one CPU and the swarm on another (taskset; the first two
CPUs this script may use): the swarm's own handshakes then take no CPU from the edge,
and the rate is the edge's alone on one core (unpinned, both share every core).

Usage: python3 bench/scale.py [--tunnels N] [--small N] [--conns C] [--idle-secs S]
                              [--requests R] [--sources S] [--edge PATH] [--pin] [--debug]
       (needs curl, and taskset for --pin; builds --release unless --debug)
"""

import argparse
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as bench  # noqa: E402  (Proc, host line)

ROOT = bench.ROOT
DOMAIN = "scale.test"


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tunnels", type=int, default=25000, metavar="N", help="tunnels of the large run (default 25000)")
    ap.add_argument("--small", type=int, default=100, metavar="N", help="tunnels of the small run (default 100; 0: none)")
    ap.add_argument("--conns", type=int, default=2, metavar="C", help="connections per tunnel (default 2)")
    ap.add_argument("--idle-secs", type=int, default=30, metavar="S", help="idle CPU window (default 30)")
    ap.add_argument("--requests", type=int, default=200, metavar="R", help="requests for the latency (default 200)")
    ap.add_argument("--sources", type=int, default=64, metavar="S", help="swarm source addresses (default 64)")
    ap.add_argument("--debug", action="store_true", help="debug builds (a smoke test of the harness)")
    ap.add_argument("--edge", metavar="PATH", help="this mailslot-edge binary instead of building one "
                    "(an A/B of two edges: run the script once with each)")
    ap.add_argument("--pin", action="store_true", help="the edge on one CPU, the swarm on another (taskset)")
    a = ap.parse_args()
    if not 1 <= a.tunnels <= 200000 or not 0 <= a.small <= a.tunnels or not 1 <= a.conns <= 8:
        ap.error("--tunnels 1-200000, --small 0..tunnels, --conns 1-8")
    if not 1 <= a.idle_secs <= 600 or not 1 <= a.requests <= 10000:
        ap.error("--idle-secs 1-600, --requests 1-10000")
    a.cpus = None
    if a.pin:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2 or not shutil.which("taskset"):
            ap.error("--pin needs two CPUs and taskset")
        a.cpus = (cpus[0], cpus[1])
    return a


def pinned(argv, cpu):
    """`argv` run on CPU `cpu` only (all its threads), or as is when `cpu` is None."""
    return argv if cpu is None else ["taskset", "-c", str(cpu), *argv]


def build(debug, edge=None):
    """The edge as it ships (release: LTO, opt-level 3), and the swarm in a separate build:
    with the dev-dependencies an example needs, one build would unify their features into
    the edge's too. The swarm is a load tool, built without LTO (minutes less)."""
    profile = [] if debug else ["--release"]
    print("building the edge and the swarm ...", flush=True)
    if not edge:
        subprocess.run(["cargo", "build", "--quiet", *profile, "--bin", "mailslot-edge"], cwd=ROOT, check=True)
    subprocess.run(["cargo", "build", "--quiet", *profile, "--example", "swarm"], cwd=ROOT, check=True,
                   env={**os.environ, "CARGO_PROFILE_RELEASE_LTO": "false", "CARGO_PROFILE_RELEASE_CODEGEN_UNITS": "16"})
    d = os.path.join(ROOT, "target", "debug" if debug else "release")
    return edge or os.path.join(d, "mailslot-edge"), os.path.join(d, "examples", "swarm")


def raise_limits():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def start_edge(binary, tmp, name, cpu=None):
    d = os.path.join(tmp, name)
    os.makedirs(d)
    bench.run([binary, "init", "--dir", d, "--hostname", "localhost", "--hostname", f"*.{DOMAIN}"])
    yml = os.path.join(d, "edge.yml")
    text = open(yml).read()
    text = re.sub(r"^(tunnel-listen|http-listen|https-listen):.*$",
                  lambda m: f"{m.group(1)}: " + ("none" if m.group(1) == "https-listen" else "127.0.0.1:0"),
                  text, flags=re.M)
    open(yml, "w").write(text)
    p = bench.Proc(pinned([binary, "serve", "--config", yml], cpu), env={"RUST_LOG": "warn,mailslot::edge=info"})
    tunnel = p.wait_line(r"tunnel listener on udp (\S+)").group(1)
    http = p.wait_line(r": HTTP on (\S+)").group(1)
    drain(p)
    return dict(dir=d, proc=p, tunnel=tunnel, http=http)


def drain(proc):
    """Reads the edge's log from now on (a line per registration at info) so that a full
    pipe never blocks it; the last lines are kept for errors."""
    import threading
    fd = proc.p.stdout.fileno()
    os.set_blocking(fd, True)

    def loop():
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            proc.lines = (proc.lines + chunk.decode(errors="replace").splitlines())[-50:]

    threading.Thread(target=loop, daemon=True).start()


def memory(pid):
    """VmRSS and smaps_rollup's Rss and Anonymous, KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1])
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                k = line.split(":")[0]
                if k in ("Rss", "Anonymous"):
                    out[k] = int(line.split()[1])
    except OSError:
        pass
    return out


def ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def latency(http, host, count):
    url = f"http://{http}/"
    out = bench.run(["curl", "-s", "-H", f"Host: {host}", "-w", "%{http_code} %{time_total}\n",
                     *([url, "-o", "/dev/null"] * count)], timeout=120).stdout
    codes, times = [], []
    for line in out.strip().splitlines():
        code, t = line.split()
        codes.append(code)
        times.append(float(t) * 1000)
    bad = sum(1 for c in codes if c != "200")
    times.sort()
    return dict(p50=statistics.median(times), p90=times[int(len(times) * 0.9) - 1] if len(times) >= 10 else times[-1],
                bad=bad, n=len(times))


def one(binaries, tmp, n, a):
    edge_bin, swarm_bin = binaries
    edge_cpu, swarm_cpu = a.cpus or (None, None)
    e = start_edge(edge_bin, tmp, f"edge-{n}", edge_cpu)
    pid = e["proc"].p.pid
    time.sleep(1)  # a measurement window: the edge's start-up allocations settle
    before = memory(pid)
    row = dict(n=n, before=before)
    swarm = None
    if n:
        ramp0 = ticks(pid)
        swarm = bench.Proc(pinned([swarm_bin, "--edge", e["tunnel"], "--ca", os.path.join(e["dir"], "ca.pem"),
                                   "--signing-key", os.path.join(e["dir"], "signing.key"), "--tunnels", str(n),
                                   "--conns", str(a.conns), "--sources", str(a.sources), "--domain", DOMAIN],
                                  swarm_cpu))
        m = swarm.wait_line(r"registered (\d+) tunnels \((\d+) connections\) in ([\d.]+) s: (\d+) tunnels/s, (\d+) failed",
                            timeout=600)
        row.update(conns=int(m.group(2)), secs=float(m.group(3)), rate=int(m.group(4)), failed=int(m.group(5)))
        row["ramp_ms"] = (ticks(pid) - ramp0) * 1000 / os.sysconf("SC_CLK_TCK") / n
        swarm.wait_line(r"^holding")
        print(f"  {n} tunnels: {m.group(0)}", flush=True)
        time.sleep(2)  # a measurement window: the last registrations' tasks finish
    t0, c0 = time.time(), ticks(pid)
    time.sleep(a.idle_secs)
    row["idle_ticks"] = ticks(pid) - c0
    row["idle_secs"] = time.time() - t0
    row["after"] = memory(pid)
    if n:
        row["lat"] = latency(e["http"], f"t0.{DOMAIN}", a.requests)
        swarm.p.terminate()
        m = swarm.wait_line(r"alive: (\d+) of (\d+) connections \((\d+) lost while idle\), (\d+) requests served")
        row.update(alive=int(m.group(1)), lost=int(m.group(3)), served=int(m.group(4)))
        swarm.p.wait(timeout=180)  # 50 000 connections closed on one pinned CPU take a while
    e["proc"].stop()
    return row


def main():
    a = parse_args()
    limit = raise_limits()
    host = bench.host_line()
    binaries = build(a.debug, a.edge)
    cmd = "python3 bench/scale.py " + " ".join(sys.argv[1:])
    print(host)
    print(f"command: {cmd}; open files limit {limit}; edge {binaries[0]}")
    if a.cpus:
        print(f"pinned: the edge on CPU {a.cpus[0]}, the swarm on CPU {a.cpus[1]}")
    rows = []
    tmp = tempfile.mkdtemp(prefix="mailslot-scale-")
    try:
        for n in [0] + ([a.small] if a.small and a.small != a.tunnels else []) + [a.tunnels]:
            print(f"run with {n} tunnels ...", flush=True)
            rows.append(one(binaries, tmp, n, a))
    finally:
        for p in bench.Proc.live:
            p.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    tick = os.sysconf("SC_CLK_TCK")
    base = rows[0]
    print()
    print("| tunnels | conns | register s | tunnels/s | edge CPU ms per tunnel registered | failed | edge RSS before → after MiB | anon after MiB "
          "| per tunnel KiB (RSS) | idle CPU % of a core | p50 ms | p90 ms | lost while idle |")
    print("|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        b, f = r["before"], r["after"]
        per = (f["VmRSS"] - b["VmRSS"]) / r["n"] if r["n"] else 0
        cpu = 100 * r["idle_ticks"] / tick / r["idle_secs"]
        lat = r.get("lat")
        print(f"| {r['n']} | {r.get('conns', 0)} | {r.get('secs', 0):.2f} | {r.get('rate', '-')} | {r.get('ramp_ms', 0):.2f} | {r.get('failed', '-')} "
              f"| {b['VmRSS'] / 1024:.1f} → {f['VmRSS'] / 1024:.1f} | {f.get('Anonymous', 0) / 1024:.1f} "
              f"| {per:.1f} | {cpu:.2f} | {lat['p50']:.3f} | {lat['p90']:.3f} | {r.get('lost', '-')} |"
              if lat else
              f"| 0 | 0 | - | - | - | - | {b['VmRSS'] / 1024:.1f} → {f['VmRSS'] / 1024:.1f} | {f.get('Anonymous', 0) / 1024:.1f} "
              f"| - | {cpu:.2f} | - | - | - |")
    big = rows[-1]
    if big["n"]:
        per = (big["after"]["VmRSS"] - base["after"]["VmRSS"]) / big["n"]
        print(f"\nmemory per idle tunnel of {a.conns} connections, {big['n']} tunnels against the edge with none: "
              f"{per:.1f} KiB (VmRSS); at this rate 1 GiB holds {int((1 << 20) / per) if per > 0 else 0} tunnels")
        for r in rows[1:]:
            lat = r["lat"]
            if lat["bad"]:
                print(f"WARNING: {lat['bad']} of {lat['n']} requests through {r['n']} tunnels were not 200")
            if r["lost"] or r["failed"]:
                print(f"WARNING: {r['n']} tunnels: {r['failed']} connections failed to register, {r['lost']} lost")


if __name__ == "__main__":
    main()
