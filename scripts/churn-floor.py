#!/usr/bin/env python3
"""The kernel's share of the fleet benchmark's churn phase, without a route server.

`mbbench --scenario fleet` at H = 5,000 measures a churn phase: for 20 s every
session sends a KEEPALIVE every 5 s (about 20,000 in all), which the server
reads and echoes, and 400 single-route events reach about 67 subscribers each
(about 27,000 deliveries, one write per subscriber socket). This script does
exactly those socket operations with no MetalBond logic at all: a "server"
process accepts H loopback connections, echoes every 4-byte frame it reads,
and every 1/K s writes a 40-byte frame to F random sockets; a "client" process
(not measured) holds the other ends, sends the keepalives spread evenly and
reads everything.

It prints the server process's CPU time split into user and kernel (system)
time. The kernel time is what any implementation pays for these reads and
writes on this machine; on loopback it includes the receiving side's TCP work,
which runs inside the sender's `sendto`. The user time is Python's and means
nothing here.

Usage: scripts/churn-floor.py [--sessions 5000] [--secs 20] [--keepalive 5]
                              [--events-per-sec 20] [--fanout 67]
Binds and connects only to [::1]. Both processes end by themselves; the
client is stopped by its PID if it has not.
"""

import argparse
import os
import random
import resource
import select
import socket
import sys
import time

FRAME = b"\x01\x00\x24\x04" + bytes(36)  # a 40-byte stand-in for an UPDATE
KEEPALIVE = b"\x01\x00\x00\x04"


def client(port, sessions, secs, keepalive, ready_w):
    """Connects `sessions` sockets, sends keepalives spread evenly, reads all."""
    socks = []
    for _ in range(sessions):
        s = socket.create_connection(("::1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        socks.append(s)
    os.write(ready_w, b"r")
    ep = select.epoll()
    for s in socks:
        ep.register(s.fileno(), select.EPOLLIN)
    by_fd = {s.fileno(): s for s in socks}
    # Session i sends at i * keepalive / sessions + k * keepalive.
    interval = keepalive / sessions
    start = time.monotonic()
    end = start + secs
    sent = 0
    while True:
        now = time.monotonic()
        if now >= end:
            break
        due = int((now - start) / interval)
        while sent < due:
            try:
                socks[sent % sessions].send(KEEPALIVE)
            except BlockingIOError:
                pass
            sent += 1
        next_at = start + (sent + 1) * interval
        for fd, _ in ep.poll(max(0.0, min(next_at, end) - time.monotonic())):
            try:
                while by_fd[fd].recv(65536):
                    pass
            except BlockingIOError:
                pass
    for s in socks:
        s.close()


def server(listener, sessions, secs, events_per_sec, fanout):
    """Accepts, echoes keepalives, writes the events' deliveries; returns rusage."""
    conns = []
    while len(conns) < sessions:
        c, _ = listener.accept()
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.setblocking(False)
        conns.append(c)
    ep = select.epoll()
    for c in conns:
        ep.register(c.fileno(), select.EPOLLIN)
    by_fd = {c.fileno(): c for c in conns}
    rng = random.Random(1)
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.monotonic()
    end = start + secs
    events = echoes = deliveries = 0
    while True:
        now = time.monotonic()
        if now >= end:
            break
        due = int((now - start) * events_per_sec)
        while events < due:
            for c in rng.sample(conns, fanout):
                try:
                    c.send(FRAME)
                    deliveries += 1
                except BlockingIOError:
                    pass
            events += 1
        next_at = start + (events + 1) / events_per_sec
        for fd, _ in ep.poll(max(0.0, min(next_at, end) - time.monotonic())):
            c = by_fd[fd]
            try:
                data = c.recv(65536)
            except BlockingIOError:
                continue
            if not data:
                ep.unregister(fd)
                continue
            for _ in range(len(data) // len(KEEPALIVE)):
                try:
                    c.send(KEEPALIVE)
                    echoes += 1
                except BlockingIOError:
                    pass
    after = resource.getrusage(resource.RUSAGE_SELF)
    for c in conns:
        c.close()
    return after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime, events, echoes, deliveries


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sessions", type=int, default=5000)
    p.add_argument("--secs", type=float, default=20.0)
    p.add_argument("--keepalive", type=float, default=5.0)
    p.add_argument("--events-per-sec", type=float, default=20.0)
    p.add_argument("--fanout", type=int, default=67)
    a = p.parse_args()
    if a.fanout > a.sessions:
        sys.exit("churn-floor: --fanout must not exceed --sessions")
    listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("::1", 0))
    listener.listen(4096)
    port = listener.getsockname()[1]
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        listener.close()
        try:
            client(port, a.sessions, a.secs + 1.0, a.keepalive, ready_w)
        finally:
            os._exit(0)
    try:
        user, system, events, echoes, deliveries = server(
            listener, a.sessions, a.secs, a.events_per_sec, a.fanout
        )
        os.read(ready_r, 1)
    finally:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if os.waitpid(pid, os.WNOHANG) != (0, 0):
                break
            time.sleep(0.05)
        else:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
    print(
        f"churn floor: {a.sessions} sessions, {a.secs:g} s: {events} events, "
        f"{deliveries} deliveries, {echoes} keepalive echoes"
    )
    print(f"server process CPU: kernel {system:.2f} s, user {user:.2f} s (Python's; meaningless)")


if __name__ == "__main__":
    main()
