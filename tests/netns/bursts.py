"""Groups the IPv4 packets crossing an interface into bursts and says who starts them.

usage: bursts.py IFACE GAP_MS SECONDS

Captures on IFACE (an AF_PACKET socket; run it in the NAT's namespace on the LAN
side) for SECONDS, then prints a summary and exits. A burst is a run of packets of
one flow (protocol, device port, remote address and port) with gaps under GAP_MS;
the side that sends its first packet starts it: "up" (the device) or "down" (the
remote end). For an idle QUIC or HTTP/2 connection a burst is one keep-alive and its
acknowledgement, so this splits the keep-alive traffic by the end whose timer fired.
A wake-up is a burst of the whole link (any flow).

QUIC connections to one edge share the device's UDP socket, hence one flow: their
keep-alives, timed from the same registration, land in one burst.

Output, one line each ("bursts:" lines, then "done"):
  bursts: PROTO STARTER COUNT PACKETS BYTES SIZES FIRST REST
where SIZES lists packets-per-burst:count, FIRST the IP lengths of the bursts' first
packets (length:count; the keep-alives that started them) and REST those of the
others (replies, acknowledgements), and
  wakeups: COUNT
Bytes are IP total lengths, as iptables counts them. At most MAX_FLOWS flows.
"""
import collections
import select
import socket
import struct
import sys
import time

MAX_FLOWS = 1000
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4

iface, gap, limit = sys.argv[1], float(sys.argv[2]) / 1000.0, float(sys.argv[3])
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
sock.bind((iface, 0))
print(f"capturing on {iface}", flush=True)

last = {}  # flow -> (time of its last packet, key of its current burst)
bursts = collections.defaultdict(
    lambda: [0, 0, 0, collections.Counter(), collections.Counter(), collections.Counter()]
)
current = {}  # flow -> [proto, starter, packets, bytes, first length, other lengths]
wakeups, link_last = 0, None


def close(flow):
    proto, starter, pkts, size, first, rest = current.pop(flow)
    b = bursts[(proto, starter)]
    b[0] += 1
    b[1] += pkts
    b[2] += size
    b[3][pkts] += 1
    b[4][first] += 1
    b[5].update(rest)


end = time.monotonic() + limit
while True:
    left = end - time.monotonic()
    if left <= 0:
        break
    ready, _, _ = select.select([sock], [], [], left)
    if not ready:
        continue
    frame, addr = sock.recvfrom(65535)
    now = time.monotonic()
    if len(frame) < 14 + 20 or frame[12:14] != b"\x08\x00":
        continue
    ip = frame[14:]
    ihl = (ip[0] & 0x0F) * 4
    total = struct.unpack("!H", ip[2:4])[0]
    proto = {6: "tcp", 17: "udp"}.get(ip[9], "other")
    src, dst = ip[12:16], ip[16:20]
    sport = dport = 0
    if proto != "other" and len(ip) >= ihl + 4:
        sport, dport = struct.unpack("!HH", ip[ihl : ihl + 4])
    up = addr[2] != PACKET_OUTGOING
    if proto == "udp" and (dport == 53 if up else sport == 53):
        proto = "dns"
    flow = (proto, sport, dst, dport) if up else (proto, dport, src, sport)
    if link_last is None or now - link_last >= gap:
        wakeups += 1
    link_last = now
    if flow in current and now - last[flow] >= gap:
        close(flow)
    if flow not in current:
        if len(current) >= MAX_FLOWS:
            continue
        current[flow] = [proto, "up" if up else "down", 0, 0, total, collections.Counter()]
    else:
        current[flow][5][total] += 1
    current[flow][2] += 1
    current[flow][3] += total
    last[flow] = now

for flow in list(current):
    close(flow)


def counts(counter):
    return ",".join(f"{n}:{c}" for n, c in sorted(counter.items())) or "-"


for (proto, starter), (count, pkts, size, sizes, first, rest) in sorted(bursts.items()):
    print(
        f"bursts: {proto} {starter} {count} {pkts} {size} {counts(sizes)} "
        f"{counts(first)} {counts(rest)}",
        flush=True,
    )
print(f"wakeups: {wakeups}", flush=True)
print("done", flush=True)
