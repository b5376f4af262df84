"""Delays every packet of an NFQUEUE by a fixed time (the kernel here has no netem).

usage: delay.py QUEUE DELAY_MS MAX_SECONDS

Packets are held in arrival order and accepted when their time is up; at most
MAX_HELD are held (beyond that they pass at once), and the program ends after
MAX_SECONDS, accepting what it holds. The iptables rule uses --queue-bypass, so
packets pass undelayed whenever this program is not running.
"""
import collections
import select
import sys
import time

from netfilterqueue import NetfilterQueue

MAX_HELD = 20000

queue, delay, limit = int(sys.argv[1]), float(sys.argv[2]) / 1000.0, float(sys.argv[3])
held = collections.deque()


def on_packet(pkt):
    if len(held) >= MAX_HELD:
        pkt.accept()
    else:
        held.append((time.monotonic() + delay, pkt))


nfq = NetfilterQueue()
nfq.bind(queue, on_packet, max_len=MAX_HELD)
fd = nfq.get_fd()
print(f"delaying queue {queue} by {delay * 1000:.0f} ms", flush=True)
end = time.monotonic() + limit
try:
    while True:
        now = time.monotonic()
        if now >= end:
            break
        while held and held[0][0] <= now:
            held.popleft()[1].accept()
        wait = min(held[0][0] - now if held else 0.05, end - now)
        ready, _, _ = select.select([fd], [], [], max(0.0, wait))
        if ready:
            nfq.run(False)
finally:
    while held:
        held.popleft()[1].accept()
    nfq.unbind()
