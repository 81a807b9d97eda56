#!/usr/bin/env python3
"""Writes the seed corpus (fuzz/corpus/TARGET/): a handful of valid inputs
per target, in each target's input encoding (see the target's header)."""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
S16 = 5                      # virtio-snd format code of S16
R48000 = 7                   # virtio-snd rate code of 48000


def put(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


u32 = lambda v: struct.pack("<I", v)
u16 = lambda v: struct.pack("<H", v)

# ---- control: sel, req_len, body, nr, nw(+u16 size), flags ---------------
CODE = {"jack_info": 0, "jack_remap": 1, "pcm_info": 2, "set_params": 3,
        "prepare": 4, "release": 5, "start": 6, "stop": 7, "chmap_info": 8,
        "unknown": 9}


def ctl(code, body, resp=4, nr=0, wsizes=None, flags=0):
    req_len = 4 + len(body)
    out = bytes([CODE[code], req_len]) + body + bytes([nr])
    if wsizes is None:
        out += bytes([0]) + u16(resp)
    else:
        out += bytes([0x80 | len(wsizes)]) + b"".join(u16(s) for s in wsizes)
    return out + bytes([flags])


def set_params(stream, buffer=7680, period=1920, channels=2, fmt=S16, rate=R48000):
    return u32(stream) + u32(buffer) + u32(period) + u32(0) + bytes([channels, fmt, rate, 0])


query = lambda start, count, size: u32(start) + u32(count) + u32(size)
pcm = lambda s: u32(s)

put("control", "pcm_info", ctl("pcm_info", query(0, 2, 32), 4 + 64))
put("control", "jack_info", ctl("jack_info", query(0, 2, 24), 4 + 48))
put("control", "chmap_info_split", ctl("chmap_info", query(0, 2, 24), wsizes=[1, 3, 48]))
put("control", "lifecycle",
    ctl("set_params", set_params(0)) + ctl("prepare", pcm(0)) + ctl("start", pcm(0))
    + ctl("stop", pcm(0)) + ctl("release", pcm(0)))
put("control", "capture_lifecycle",
    ctl("set_params", set_params(1, channels=1)) + ctl("prepare", pcm(1))
    + ctl("start", pcm(1)) + ctl("stop", pcm(1)) + ctl("release", pcm(1)))
put("control", "jack_remap_unknown", ctl("jack_remap", u32(0) + u32(0) + u32(0)) + ctl("unknown", b""))

# ---- io: ops --------------------------------------------------------------
def sp(stream, sel=0x10, period_sel=119, periods=3):
    # op 5, sub = SetParams (cmd 0) on stream; sel: S16, 44100? (sel%4=0 S16,
    # (sel>>2)%3 rate, 1+(sel>>4)%2 channels)
    return bytes([5, stream & 1, sel, period_sel, periods])


def cmd(stream, c):  # c: 1 prepare, 2 start, 3 stop, 4 release
    return bytes([5, (c << 1) | stream])


def tx(pcm, base=0, stream_sel=0):  # natural tx chain
    return bytes([0, 0, stream_sel]) + u16(pcm) + u16(base)


def rx(pcm, base=0x4000, stream_sel=0):
    return bytes([2, 0, stream_sel]) + u16(pcm) + u16(base)


put("io", "playback", sp(0) + cmd(0, 1) + tx(1920) + tx(1920, 0x1000) + cmd(0, 2) + bytes([7 | (3 << 3)]) + cmd(0, 3))
put("io", "capture", sp(1, sel=0x00) + cmd(1, 1) + rx(1920) + rx(1920, 0x5000) + cmd(1, 2) + bytes([7 | (3 << 3)]))
put("io", "paused_ring", sp(0) + cmd(0, 1) + tx(960) + cmd(0, 2) + bytes([6]) + tx(960, 0x2000) + bytes([6 | 0x20]))
put("io", "direct_parse", bytes([4, 0, 0]) + u16(100) + u16(0) + bytes([2, 0]) + u16(4) + u16(16) + bytes([0, 0]))
# An odd layout: 3 descriptors, readable after writable, through an indirect table.
put("io", "indirect", bytes([0, 0x40 | 2, 0, 0x0e, 2, 0x00, 4, 0, 0, 0x01, 8, 0, 1]) + bytes([0x01, 8]) + u16(0x100))
put("io", "event_and_detach", bytes([7 | (4 << 3), 0x40, 0, 0x01, 8]) + u16(0x3000) + bytes([7 | (2 << 3), 7 | (2 << 3)]))

# ---- vhost_user: mode 0, frames (request, fl, len, body) -------------------
GET_FEATURES, SET_FEATURES, SET_OWNER, RESET_OWNER = 1, 2, 3, 4
GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES, GET_QUEUE_NUM = 15, 16, 17
SET_VRING_NUM, SET_VRING_ADDR, SET_VRING_BASE, GET_VRING_BASE = 8, 9, 10, 11
SET_VRING_KICK, SET_VRING_CALL, SET_VRING_ENABLE, GET_CONFIG = 12, 13, 18, 24
RESET_DEVICE = 34


def frame(req, body=b"", need_reply=False):
    return bytes([req, 0x08 if need_reply else 0, len(body)]) + body


u64 = lambda v: struct.pack("<Q", v)
FEATURES = (1 << 32) | (1 << 29) | (1 << 28) | (1 << 30)
PROTO = (1 << 0) | (1 << 3) | (1 << 9) | (1 << 13)
handshake = (frame(GET_FEATURES) + frame(GET_PROTOCOL_FEATURES)
             + frame(SET_PROTOCOL_FEATURES, u64(PROTO)) + frame(SET_OWNER)
             + frame(GET_QUEUE_NUM) + frame(SET_FEATURES, u64(FEATURES)))
put("vhost_user", "handshake", b"\x00" + handshake)
put("vhost_user", "get_config", b"\x00" + handshake + frame(GET_CONFIG, u32(0) + u32(16) + u32(0) + bytes(16)))
ring = b"".join(
    frame(SET_VRING_NUM, u32(q) + u32(64)) + frame(SET_VRING_BASE, u32(q) + u32(0))
    + frame(SET_VRING_CALL, u64(q | 0x100)) + frame(SET_VRING_KICK, u64(q | 0x100))
    + frame(SET_VRING_ENABLE, u32(q) + u32(1)) for q in range(4))
put("vhost_user", "rings_without_fds", b"\x00" + handshake + ring + b"".join(frame(GET_VRING_BASE, u32(q) + u32(0)) for q in range(4)))
put("vhost_user", "reset", b"\x00" + handshake + frame(RESET_DEVICE, b"", True) + frame(RESET_OWNER))
put("vhost_user", "raw_header", b"\x01" + u32(GET_FEATURES) + u32(1) + u32(0))

# ---- config ---------------------------------------------------------------
root = os.path.dirname(HERE)
for name in ("default.toml", "pad.toml"):
    p = os.path.join(root, "configs", name)
    if os.path.exists(p):
        put("config", name, open(p, "rb").read())
put("config", "full.toml", b'''[daemon]
socket = "/tmp/x.sock"
api_socket = "/tmp/x.api"

[devices.n]
kind = "null"

[devices.a]
kind = "alsa"
pcm = "default"

[[streams]]
direction = "output"
device = "n"
group = 1
formats = ["S16", "FLOAT"]
rates = [44100, 48000]
channels = { min = 1, max = 8 }
on_remove = "error"

[[streams]]
direction = "input"
device = "n"
''')
put("config", "bad_key.toml", b'[devices.n]\nkind = "null"\n[[streams]]\ndirection = "output"\ndevice = "n"\nrats = [1]\n')

# ---- api ------------------------------------------------------------------
put("api", "status", b'{"cmd":"status"}\n')
put("api", "detach_attach", b'{"cmd":"detach","device":"null0"}\n{"cmd":"status"}\n{"cmd":"attach","device":"null0"}\n')
put("api", "errors", b'{"cmd":"detach"}\n{"cmd":"fly"}\n{}\nnot json\n\n{"cmd":"attach","device":"nope"}')
put("api", "long_line", b" " * 4200 + b'{"cmd":"status"}\n{"cmd":"status"}\n')
put("api", "not_utf8", b'{"cmd":"status"}\n\xff\xfe\n{"cmd":"status"}\n')

# ---- vhost_user with fds: guest memory, a running control ring, a kick ----
SET_MEM_TABLE = 5
USER = 0x10_0000_0000


def fdframe(req, body=b""):  # flag 0x10: fds attached
    return bytes([req, 0x10, len(body)]) + body


def mem_write(offset, data):
    out = b""
    for i in range(0, len(data), 255):
        chunk = data[i:i + 255]
        out += bytes([0xf0]) + u32(offset + i) + bytes([len(chunk)]) + chunk
    return out


def desc(addr, length, flags, nxt):
    return u64(addr) + u32(length) + u16(flags) + u16(nxt)


def vring_addr(q, desc_a, used_a, avail_a):
    return u32(q) + u32(0) + u64(USER + desc_a) + u64(USER + used_a) + u64(USER + avail_a) + u64(0)


mem_table = u32(1) + u32(0) + u64(0) + u64(1 << 20) + u64(USER) + u64(0)
q0 = (frame(SET_VRING_NUM, u32(0) + u32(64))
      + frame(SET_VRING_ADDR, vring_addr(0, 0x0, 0x1000, 0x400))
      + frame(SET_VRING_BASE, u32(0) + u32(0))
      + fdframe(SET_VRING_CALL, u64(0)) + fdframe(SET_VRING_KICK, u64(0))
      + frame(SET_VRING_ENABLE, u32(0) + u32(1)))
guest = (mem_write(0x0, desc(0x2000, 16, 1, 1) + desc(0x3000, 68, 2, 0))
         + mem_write(0x400, u16(0) + u16(1) + u16(0))
         + mem_write(0x2000, u32(0x0100) + query(0, 2, 32)))
put("vhost_user", "running_control_ring",
    b"\x00" + handshake + fdframe(SET_MEM_TABLE, mem_table) + q0 + guest + b"\xf1\x00" + b"\xf2" * 3
    + frame(GET_VRING_BASE, u32(0) + u32(0)))
