#!/usr/bin/env python3
"""pad-client.py: a scriptable client of a vsound pad (host side of the guest suite).

Connects to a pad's Unix socket, records everything the pad sends (the guest's
playback) and optionally feeds it bytes (the guest's capture), paced in real time.
Runs until SIGTERM/SIGINT (or --exit-after), then writes a JSON summary.

Usage: pad-client.py --socket PATH --out PREFIX [options]

  --socket PATH        the pad's socket (waits up to --connect-wait seconds for it)
  --out PREFIX         received bytes go to PREFIX.0, PREFIX.1, ...: a new segment per
                       connection (and per idle gap with --split-idle-ms)
  --split-idle-ms N    also start a new segment after N ms without playback bytes
  --split-on TEXT      also start a new segment at each new line of --watch LOG that
                       contains TEXT (e.g. "VSOUND-INFO: split")
  --ready FILE         created once the first connection is up
  --summary FILE       JSON summary at exit (default PREFIX.json): segments with
                       their size, first/last byte times and longest pause between two
                       receives (max_gap_ms, starting max_gap_at_ms) and each receive
                       ("receives": [ms, bytes]), every event, and t0_mono (the
                       client's time 0 on CLOCK_MONOTONIC, in seconds)
  --feed FILE          write FILE's bytes to the pad (the guest's capture input) at
                       --feed-rate bytes per second, --lead-ms ahead of real time
                       (whole file at once with --feed-rate 0)
  --watch LOG          a file to watch (the guest console log) for --when rules
  --when TEXT:ACTION   when a new line of LOG contains TEXT, do ACTION (repeatable;
                       each rule fires once, in the order given)
  --at MS:ACTION       do ACTION MS after the first playback byte arrived (repeatable)
  ACTION is one of: disconnect, connect, feed (start --feed), mark (only logged)
  --no-connect         do not connect at start (wait for a connect action)
  --exit-after MS      exit by itself MS after start (a safety net)

Everything is single-threaded (select with a 5 ms tick); times in the summary are
milliseconds since the client started (CLOCK_MONOTONIC).
"""
import argparse
import json
import os
import select
import signal
import socket
import sys
import time

T0 = time.monotonic()


def now_ms():
    return (time.monotonic() - T0) * 1000.0


def log(msg):
    sys.stderr.write("pad-client[%s] %8.1f ms: %s\n" % (os.getpid(), now_ms(), msg))
    sys.stderr.flush()


class Client:
    def __init__(self, args):
        self.args = args
        self.sock = None
        self.segments = []  # dicts: file, bytes, first_ms, last_ms, conn
        self.seg_file = None
        self.events = []
        self.connections = 0
        self.first_byte_ms = None
        self.last_rx_ms = None
        self.feed = open(args.feed, "rb").read() if args.feed else None
        self.feed_pos = 0
        self.feed_start_ms = None
        self.when_rules = []
        for r in args.when:
            text, _, action = r.rpartition(":")
            self.when_rules.append([text, action, False])
        self.at_rules = []
        for r in args.at:
            ms, _, action = r.partition(":")
            self.at_rules.append([float(ms), action, False])
        self.watch_pos = 0
        self.watch_buf = b""
        self.stop = False

    def event(self, what):
        self.events.append({"ms": round(now_ms(), 1), "event": what})
        log(what)

    # --- connection ---
    def connect(self):
        if self.sock is not None:
            return
        deadline = time.monotonic() + self.args.connect_wait
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(self.args.socket)
                break
            except (FileNotFoundError, ConnectionRefusedError) as e:
                s.close()
                if time.monotonic() > deadline:
                    raise SystemExit("pad-client: cannot connect to %s: %s" % (self.args.socket, e))
                time.sleep(0.02)
        s.setblocking(False)
        self.sock = s
        self.connections += 1
        self.event("connected (#%d)" % self.connections)
        self.new_segment()
        if self.args.ready and self.connections == 1:
            open(self.args.ready, "w").close()

    def disconnect(self, why="requested"):
        if self.sock is None:
            return
        self.sock.close()
        self.sock = None
        self.close_segment()
        self.event("disconnected (%s)" % why)

    # --- segments ---
    def new_segment(self):
        self.close_segment()
        n = len(self.segments)
        path = "%s.%d" % (self.args.out, n)
        self.seg_file = open(path, "wb")
        self.segments.append({"file": path, "bytes": 0, "first_ms": None, "last_ms": None,
                              "max_gap_ms": 0, "max_gap_at_ms": None, "receives": [],
                              "connection": self.connections})

    def close_segment(self):
        if self.seg_file is not None:
            self.seg_file.close()
            self.seg_file = None

    def received(self, data):
        t = now_ms()
        if self.first_byte_ms is None:
            self.first_byte_ms = t
            self.event("first playback byte")
        seg = self.segments[-1]
        if (self.args.split_idle_ms and seg["bytes"] > 0
                and t - seg["last_ms"] > self.args.split_idle_ms):
            self.new_segment()
            seg = self.segments[-1]
        if seg["first_ms"] is None:
            seg["first_ms"] = round(t, 1)
        elif t - seg["last_ms"] > seg["max_gap_ms"]:
            seg["max_gap_ms"] = round(t - seg["last_ms"], 1)
            seg["max_gap_at_ms"] = seg["last_ms"]
        seg["last_ms"] = round(t, 1)
        seg["bytes"] += len(data)
        seg["receives"].append([round(t, 1), len(data)])
        self.seg_file.write(data)
        self.last_rx_ms = t

    # --- feeding ---
    def start_feed(self):
        if self.feed is None:
            self.event("feed requested but no --feed file")
            return
        if self.feed_start_ms is None:
            self.feed_start_ms = now_ms()
            self.event("feed starts (%d bytes)" % len(self.feed))

    def feed_due(self):
        if self.feed_start_ms is None or self.feed_pos >= len(self.feed):
            return 0
        if self.args.feed_rate <= 0:
            return len(self.feed)
        elapsed = (now_ms() - self.feed_start_ms + self.args.lead_ms) / 1000.0
        due = int(elapsed * self.args.feed_rate)
        due -= due % self.args.feed_align
        return min(due, len(self.feed))

    def pump_feed(self):
        if self.sock is None:
            return
        due = self.feed_due()
        while self.feed_pos < due:
            try:
                n = self.sock.send(self.feed[self.feed_pos:due])
            except BlockingIOError:
                return
            except (BrokenPipeError, ConnectionResetError) as e:
                self.disconnect("send: %s" % e)
                return
            self.feed_pos += n
            if self.feed_pos >= len(self.feed):
                self.event("feed done (%d bytes)" % self.feed_pos)

    # --- rules ---
    def do(self, action, why):
        self.event("%s: %s" % (why, action))
        if action == "disconnect":
            self.disconnect(why)
        elif action == "connect":
            self.connect()
        elif action == "feed":
            self.start_feed()
        elif action == "mark":
            pass
        elif action == "exit":
            self.stop = True
        else:
            self.event("unknown action %r" % action)

    def check_watch(self):
        if not self.args.watch:
            return
        if all(r[2] for r in self.when_rules) and not self.args.split_on:
            return
        try:
            with open(self.args.watch, "rb") as f:
                f.seek(self.watch_pos)
                chunk = f.read()
        except FileNotFoundError:
            return
        if not chunk:
            return
        self.watch_pos += len(chunk)
        data = self.watch_buf + chunk
        lines = data.split(b"\n")
        self.watch_buf = lines.pop()  # incomplete last line
        for line in lines:
            text = line.decode("utf-8", "replace")
            if self.args.split_on and self.args.split_on in text and self.sock is not None:
                self.event("saw %r: new segment" % self.args.split_on)
                self.new_segment()
            for rule in self.when_rules:
                if not rule[2] and rule[0] in text:
                    rule[2] = True
                    self.do(rule[1], "saw %r" % rule[0])
                    break

    def check_at(self):
        if self.first_byte_ms is None:
            return
        t = now_ms() - self.first_byte_ms
        for rule in self.at_rules:
            if not rule[2] and t >= rule[0]:
                rule[2] = True
                self.do(rule[1], "%d ms after the first byte" % rule[0])

    # --- main loop ---
    def run(self):
        if not self.args.no_connect:
            self.connect()
        buf = bytearray(65536)
        while not self.stop:
            if self.args.exit_after and now_ms() > self.args.exit_after:
                self.event("exit-after reached")
                break
            self.check_watch()
            self.check_at()
            self.pump_feed()
            rl, wl = [], []
            if self.sock is not None:
                rl.append(self.sock)
                if self.feed_pos < self.feed_due():
                    wl.append(self.sock)
            try:
                r, w, _ = select.select(rl, wl, [], 0.005)
            except InterruptedError:
                continue
            if self.sock is not None and r:
                while True:
                    try:
                        n = self.sock.recv_into(buf)
                    except BlockingIOError:
                        break
                    except ConnectionResetError as e:
                        self.disconnect("recv: %s" % e)
                        break
                    if n == 0:
                        self.disconnect("the pad closed the connection")
                        break
                    self.received(bytes(buf[:n]))
        # Drain what is already queued, without waiting for more.
        if self.sock is not None:
            while True:
                try:
                    n = self.sock.recv_into(buf)
                except (BlockingIOError, ConnectionResetError):
                    break
                if n == 0:
                    break
                self.received(bytes(buf[:n]))
        self.disconnect("client exits")
        summary = {"segments": self.segments, "events": self.events,
                   "connections": self.connections, "fed_bytes": self.feed_pos,
                   "first_byte_ms": self.first_byte_ms, "t0_mono": T0}
        with open(self.args.summary or self.args.out + ".json", "w") as f:
            json.dump(summary, f, indent=1)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--socket", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--split-idle-ms", type=float, default=0)
    p.add_argument("--split-on")
    p.add_argument("--ready")
    p.add_argument("--summary")
    p.add_argument("--feed")
    p.add_argument("--feed-rate", type=int, default=0)
    p.add_argument("--feed-align", type=int, default=1, help="feed in multiples of N bytes")
    p.add_argument("--lead-ms", type=float, default=150)
    p.add_argument("--watch")
    p.add_argument("--when", action="append", default=[])
    p.add_argument("--at", action="append", default=[])
    p.add_argument("--no-connect", action="store_true")
    p.add_argument("--connect-wait", type=float, default=10)
    p.add_argument("--exit-after", type=float, default=0)
    args = p.parse_args()
    c = Client(args)

    def stop(signum, frame):
        c.stop = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    c.run()


if __name__ == "__main__":
    main()
