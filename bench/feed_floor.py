#!/usr/bin/env python3
"""The machine's floor for a fan-out: no server, only the kernel.

One process pinned to CPU 0 sends a 300-byte event with one send() to each
of N loopback TCP sockets, whose peers (a process pinned to CPU 1) read them
with epoll: what the kernel alone costs to hand N subscribers an event,
with, on loopback, each peer's TCP receive path run on the sending CPU as
well. Printed: the loop's wall time (median of ROUNDS) and its CPU per
delivery. bench/feed.sh compares the servers' time-to-all with it.

    python3 bench/feed_floor.py [N] [ROUNDS]
"""

import os
import resource
import select
import socket
import sys
import time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 10
EVENT = b"x" * 300

listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(4096)
port = listener.getsockname()[1]
ready_r, ready_w = os.pipe()

child = os.fork()
if child == 0:
    os.sched_setaffinity(0, {1})
    poller = select.epoll()
    peers = {}
    for _ in range(N):
        c = socket.create_connection(("127.0.0.1", port))
        c.setblocking(False)
        poller.register(c.fileno(), select.EPOLLIN)
        peers[c.fileno()] = c
    os.write(ready_w, b"1")
    want, got = N * ROUNDS * len(EVENT), 0
    while got < want:
        for fd, _ in poller.poll(1.0):
            try:
                got += len(peers[fd].recv(65536))
            except BlockingIOError:
                pass
    os._exit(0)

os.sched_setaffinity(0, {0})
senders = []
for _ in range(N):
    s, _ = listener.accept()
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    senders.append(s)
os.read(ready_r, 1)
walls, cpus = [], []
for _ in range(ROUNDS):
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    for s in senders:
        s.send(EVENT)
    t1 = time.perf_counter()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    walls.append(t1 - t0)
    cpus.append((r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime))
    # Let the peers drain before the next round.
    time.sleep(0.3)
os.waitpid(child, 0)
walls.sort()
cpus.sort()
print(
    f"floor: {N} sends of {len(EVENT)} bytes, loop wall median {walls[len(walls) // 2] * 1e3:.1f} ms "
    f"(max {walls[-1] * 1e3:.1f}), CPU {cpus[len(cpus) // 2] / N * 1e6:.2f} us per delivery"
)
