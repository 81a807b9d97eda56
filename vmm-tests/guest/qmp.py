#!/usr/bin/env python3
"""qmp.py: a small QMP client (QEMU's JSON monitor) for the guest suite; stdlib only.

Usage: qmp.py --socket PATH [--wait SECS] [--times FILE] STEP...

Connects to the QMP socket QEMU serves with `-qmp unix:PATH,server=on,wait=off`
(waiting up to --wait seconds, default 30, for it to appear and accept), reads the
greeting, negotiates capabilities, then runs the STEPs in order:

  stop | cont | system_reset | system_powerdown | quit
                     that QMP command; an error answer fails the step
  status=STATE       query-status must report STATE (running, paused, prelaunch,
                     shutdown...); with a comma list, any of them
  event=NAME[:DEV][@SECS]
                     wait up to SECS (default 10) for the event NAME (STOP, RESUME,
                     RESET, SHUTDOWN, DEVICE_DELETED...); with DEV, only an event whose
                     data.device is DEV counts (DEVICE_DELETED comes once for the
                     device's id and once, without an id, for its virtio-backend child);
                     events that came in earlier on this connection count
  device_del=ID      device_del of the device ID (with ACPI hotplug it only asks the
                     guest to eject it: wait for event=DEVICE_DELETED:ID)
  device_add=DRIVER[,PROP=VALUE...]
                     device_add, e.g. device_add=vhost-user-snd-pci,chardev=vsnd,id=snd0
  chardev-remove=ID  chardev-remove
  chardev-add=ID,PATH
                     chardev-add of a Unix socket client chardev on PATH (server=false,
                     no reconnect: QEMU connects at once, and fails the step if nobody
                     listens)
  sleep=SECS         sleep (events keep being collected)

One line per step on stdout, "qmp: <ms since start> ms: ...", and the events seen; on a
failed step a line "qmp: FAIL: ..." and exit status 1 (2 when it cannot connect). The
timing of each command (ms from sending it to its answer) is printed as well, so a log
shows when the VM really stopped and resumed. --times FILE: a JSON object, for each
command run, the CLOCK_MONOTONIC time (seconds) of its answer (pad-client.py's summary
has the same clock, to place a pause among the bytes a pad received).
"""
import argparse
import json
import socket
import sys
import time

T0 = time.monotonic()


def ms():
    return (time.monotonic() - T0) * 1000.0


def say(msg):
    sys.stdout.write("qmp: %8.1f ms: %s\n" % (ms(), msg))
    sys.stdout.flush()


def die(msg, status=1):
    sys.stdout.write("qmp: FAIL: %s\n" % msg)
    sys.stdout.flush()
    sys.exit(status)


class Qmp:
    def __init__(self, path, wait):
        deadline = time.monotonic() + wait
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError) as e:
                s.close()
                if time.monotonic() > deadline:
                    die("cannot connect to %s after %.0f s: %s" % (path, wait, e), 2)
                time.sleep(0.05)
        self.sock = s
        self.buf = b""
        self.events = []
        greeting = self.read(10)
        if "QMP" not in greeting:
            die("no QMP greeting from %s: %r" % (path, greeting), 2)
        v = greeting["QMP"].get("version", {}).get("qemu", {})
        say("connected to %s (QEMU %s.%s.%s)" % (path, v.get("major"), v.get("minor"), v.get("micro")))
        self.execute("qmp_capabilities")

    def read(self, timeout):
        """The next JSON object from QEMU (an answer or an event), or None at timeout."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                return None
            if not chunk:
                die("QEMU closed the QMP connection")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return json.loads(line)

    def note_event(self, obj):
        self.events.append(obj)
        say("event %s%s" % (obj["event"], (" " + json.dumps(obj["data"])) if obj.get("data") else ""))

    def execute(self, cmd, args=None, timeout=30):
        msg = {"execute": cmd}
        if args:
            msg["arguments"] = args
        t = ms()
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        deadline = time.monotonic() + timeout
        while True:
            obj = self.read(max(0.0, deadline - time.monotonic()))
            if obj is None:
                die("no answer to %s in %d s" % (cmd, timeout))
            if "event" in obj:
                self.note_event(obj)
                continue
            if "error" in obj:
                die("%s: %s: %s" % (cmd, obj["error"].get("class"), obj["error"].get("desc")))
            if "return" in obj:
                return obj["return"], ms() - t

    def wait_event(self, name, timeout, device=None):
        def match(e):
            return e["event"] == name and (device is None or e.get("data", {}).get("device") == device)

        if any(match(e) for e in self.events):
            return True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            obj = self.read(deadline - time.monotonic())
            if obj is None:
                break
            if "event" in obj:
                self.note_event(obj)
                if match(obj):
                    return True
        return False

    def pump(self, secs):
        """Sleep SECS while collecting events."""
        deadline = time.monotonic() + secs
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            obj = self.read(left)
            if obj is not None and "event" in obj:
                self.note_event(obj)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--socket", required=True)
    p.add_argument("--wait", type=float, default=30)
    p.add_argument("--times")
    p.add_argument("steps", nargs="+")
    args = p.parse_args()
    q = Qmp(args.socket, args.wait)
    times = {}
    for step in args.steps:
        if step in ("stop", "cont", "system_reset", "system_powerdown", "quit"):
            _, took = q.execute(step)
            times[step] = time.monotonic()
            if args.times:
                with open(args.times, "w") as f:
                    json.dump(times, f)
            say("%s: done (%.1f ms)" % (step, took))
        elif step.split("=", 1)[0] in ("device_del", "device_add", "chardev-remove", "chardev-add"):
            cmd, _, spec = step.partition("=")
            if cmd == "device_del":
                args_ = {"id": spec}
            elif cmd == "chardev-remove":
                args_ = {"id": spec}
            elif cmd == "device_add":
                driver, *props = spec.split(",")
                args_ = {"driver": driver}
                for prop in props:
                    k, eq, v = prop.partition("=")
                    if not eq:
                        die("device_add property %r is not NAME=VALUE" % prop, 2)
                    args_[k] = v
            else:
                cid, comma, path = spec.partition(",")
                if not comma or not path:
                    die("chardev-add needs ID,PATH, not %r" % spec, 2)
                args_ = {"id": cid, "backend": {"type": "socket", "data": {
                    "addr": {"type": "unix", "data": {"path": path}}, "server": False}}}
            _, took = q.execute(cmd, args_)
            times[cmd] = time.monotonic()
            if args.times:
                with open(args.times, "w") as f:
                    json.dump(times, f)
            say("%s %s: done (%.1f ms)" % (cmd, json.dumps(args_), took))
        elif step.startswith("status="):
            want = step.split("=", 1)[1].split(",")
            st, _ = q.execute("query-status")
            got = st.get("status")
            if got not in want:
                die("status is %s (running=%s), expected %s" % (got, st.get("running"), " or ".join(want)))
            say("status: %s" % got)
        elif step.startswith("event="):
            spec = step.split("=", 1)[1]
            name, _, secs = spec.partition("@")
            name, _, dev = name.partition(":")
            what = name + (" of device %s" % dev if dev else "")
            if not q.wait_event(name, float(secs or 10), dev or None):
                die("no %s event within %s s" % (what, secs or 10))
            say("saw event %s" % what)
        elif step.startswith("sleep="):
            q.pump(float(step.split("=", 1)[1]))
            say("slept %s s" % step.split("=", 1)[1])
        else:
            die("unknown step %r" % step, 2)
    q.sock.close()


if __name__ == "__main__":
    main()
