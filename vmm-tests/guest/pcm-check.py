#!/usr/bin/env python3
"""pcm-check.py: compare PCM a host device received with what the guest played.

Usage:
  pcm-check.py exact EXPECT GOT --frame N [--lead-silence BYTES|auto] [--min-lead BYTES]
                 [--max-tail BYTES]
      GOT must be BYTES zero bytes (default 0), then EXPECT byte for byte, then at most
      --max-tail zero bytes (default 0): the guest kernel fills the rest of the last
      period with silence when aplay drains. --lead-silence auto: any number of zero
      frames (at least --min-lead bytes) before EXPECT (e.g. a recording that began
      before the host fed the file); EXPECT's first frame must not be silence.
  pcm-check.py prefix EXPECT GOT --frame N [--min-bytes N]
      GOT must be the first len(GOT) bytes of EXPECT, whole frames, at least --min-bytes.
  pcm-check.py substring EXPECT GOT --frame N [--max-tail BYTES] [--min-bytes N] [--to-end]
                 [--offset-ms MS --tolerance-ms MS --rate BYTES_PER_SEC]
      GOT must be a contiguous, frame-aligned piece of EXPECT (found by its first bytes),
      followed by at most --max-tail zero bytes; with --to-end the piece must reach
      EXPECT's end; with --offset-ms, it must start within --tolerance-ms of that
      position in EXPECT.
  pcm-check.py pieces EXPECT GOT --frame N [--min-bytes N] [--from-start] [--to-end]
                 [--max-pieces N]
      GOT (e.g. a capture of a fed signal across a VM pause) must be made only of zero
      frames (silence, anywhere) and frame-aligned pieces of EXPECT in EXPECT's order:
      each piece starts at or after the file offset where the previous one ended (bytes
      of the file may be missing between pieces; none may come twice or out of order).
      --min-bytes: the pieces hold at least that many of the file's bytes; --from-start:
      the first piece is the file's start; --to-end: the last one reaches its end;
      --max-pieces: at most that many pieces.
  pcm-check.py sequence EXPECT1,EXPECT2,... GOT --frame N [--gap-ms MS[,MS...]
                 --tolerance-ms MS]
      GOT (e.g. what a pad's listener got with fill = "silence") must be zero frames,
      EXPECT1 byte for byte, zero frames, EXPECT2 byte for byte, ..., zero frames: each
      file whole, in order, nothing else. Each file must start with a frame that is not
      silence (it is found at the first non-zero frame after the previous one). Prints
      the silence before, between and after the files; --gap-ms: the silence between
      file K and K+1 must last the K-th MS, within --tolerance-ms (needs --rate).
  pcm-check.py locate EXPECT HEXBYTES
      print where the bytes HEXBYTES (e.g. "0a 1b 2c ...") first occur in EXPECT.

--rate (bytes per second) turns byte offsets into milliseconds in the messages. Prints one
line "pcm-check: ok: ..." or "pcm-check: FAIL: ..." (with the first differing byte);
exit status 0 or 1.
"""
import argparse
import re
import sys


def ms(args, nbytes):
    if args.rate:
        return " (%.1f ms)" % (nbytes * 1000.0 / args.rate)
    return ""


def first_diff(a, b):
    n = min(len(a), len(b))
    # binary search is not needed: compare in blocks
    step = 4096
    for i in range(0, n, step):
        if a[i:i + step] != b[i:i + step]:
            for j in range(i, min(i + step, n)):
                if a[j] != b[j]:
                    return j
    return n if len(a) != len(b) else -1


def nonzero_at(data):
    for i, x in enumerate(data):
        if x:
            return i
    return -1


def fail(msg):
    print("pcm-check: FAIL: " + msg)
    sys.exit(1)


def check_tail(args, tail, where):
    if len(tail) > args.max_tail:
        fail("%d bytes after %s, more than the allowed %d bytes of silence%s"
             % (len(tail), where, args.max_tail, ms(args, len(tail))))
    nz = nonzero_at(tail)
    if nz >= 0:
        fail("byte %d of the %d bytes after %s is not silence (0x%02x)"
             % (nz, len(tail), where, tail[nz]))


def first_frame_nonzero(expect, f, what):
    if not any(expect[:f]):
        fail("%s starts with a silent frame: it cannot be found after silence by its first frame" % what)


def nonzero_frame_at(data, pos, f):
    """Offset of the first frame at or after pos (frame-aligned) with a non-zero byte, or -1."""
    m = NONZERO.search(data, pos)
    if m is None:
        return -1
    return m.start() - m.start() % f


def cmd_exact(args, expect, got):
    if args.lead_silence == "auto":
        first_frame_nonzero(expect, args.frame, args.expect)
        lead = nonzero_frame_at(got, 0, args.frame)
        if lead < 0:
            fail("all %d bytes%s are silence" % (len(got), ms(args, len(got))))
        if lead < args.min_lead:
            fail("the file starts at received byte %d%s: less than the %d bytes%s of leading silence expected"
                 % (lead, ms(args, lead), args.min_lead, ms(args, args.min_lead)))
    else:
        lead = int(args.lead_silence)
    if len(got) < lead + len(expect):
        d = first_diff(got[lead:], expect)
        fail("got %d bytes%s, expected %d of silence + %d of PCM%s; first difference at PCM byte %d"
             % (len(got), ms(args, len(got)), lead, len(expect), ms(args, len(expect)), d))
    nz = nonzero_at(got[:lead])
    if nz >= 0:
        real = nonzero_at(got)
        fail("the %d bytes of leading silence are not silent: byte %d is 0x%02x "
             "(the first non-zero byte of the stream is at %d; the PCM itself is found at %d)"
             % (lead, nz, got[nz], real, got.find(expect[:256])))
    body = got[lead:lead + len(expect)]
    if body != expect:
        d = first_diff(body, expect)
        at = got.find(expect[:256])
        fail("PCM differs from byte %d (frame %d%s) on: got %s, expected %s; "
             "the file's first bytes are found at received offset %d (expected %d)"
             % (d, d // args.frame, ms(args, d), body[d:d + 8].hex(" "), expect[d:d + 8].hex(" "),
                at, lead))
    check_tail(args, got[lead + len(expect):], "the PCM")
    tail = len(got) - lead - len(expect)
    print("pcm-check: ok: %d bytes = %d bytes%s of silence + the file's %d bytes%s exactly + %d bytes%s of silence"
          % (len(got), lead, ms(args, lead), len(expect), ms(args, len(expect)), tail, ms(args, tail)))


def cmd_prefix(args, expect, got):
    if len(got) < args.min_bytes:
        fail("only %d bytes%s, expected at least %d" % (len(got), ms(args, len(got)), args.min_bytes))
    if len(got) % args.frame:
        fail("%d bytes is not whole %d-byte frames" % (len(got), args.frame))
    if len(got) > len(expect):
        fail("%d bytes, more than the file's %d" % (len(got), len(expect)))
    if expect[:len(got)] != got:
        d = first_diff(got, expect[:len(got)])
        fail("not a prefix of the file: differs at byte %d (frame %d%s)" % (d, d // args.frame, ms(args, d)))
    print("pcm-check: ok: %d bytes%s are exactly the file's first %d bytes"
          % (len(got), ms(args, len(got)), len(got)))


def cmd_substring(args, expect, got):
    if len(got) < max(args.min_bytes, 256):
        fail("only %d bytes%s, expected at least %d" % (len(got), ms(args, len(got)), max(args.min_bytes, 256)))
    key = got[:256]
    at = expect.find(key)
    while at >= 0 and at % args.frame:
        at = expect.find(key, at + 1)
    if at < 0:
        fail("the first 256 received bytes (%s ...) are nowhere in the file (frame-aligned)"
             % key[:16].hex(" "))
    n = min(len(got), len(expect) - at)
    d = first_diff(got[:n], expect[at:at + n])
    if d >= 0:
        n = d  # the common part ends here: only silence may follow
    if args.to_end and at + n != len(expect):
        fail("from file offset %d%s the received bytes differ at received byte %d%s, before the "
             "file's end (%d bytes)" % (at, ms(args, at), n, ms(args, n), len(expect)))
    where = "the end of the file" if at + n == len(expect) else \
        "file offset %d%s, where the received bytes stop matching" % (at + n, ms(args, at + n))
    check_tail(args, got[n:], where)
    if args.offset_ms is not None:
        off_ms = at * 1000.0 / args.rate
        if abs(off_ms - args.offset_ms) > args.tolerance_ms:
            fail("the received piece starts at %.1f ms of the file, expected %.0f +- %.0f ms"
                 % (off_ms, args.offset_ms, args.tolerance_ms))
    print("pcm-check: ok: %d bytes%s are exactly the file's bytes %d..%d%s, then %d bytes of silence"
          % (len(got), ms(args, len(got)), at, at + n, ms(args, at), len(got) - n))


NONZERO = re.compile(b"[^\\x00]")


def cmd_pieces(args, expect, got):
    f = args.frame
    if len(got) % f:
        fail("%d bytes is not whole %d-byte frames" % (len(got), f))
    pos, cursor, silence = 0, 0, 0
    pieces = []  # (received offset, file offset, length)
    while pos < len(got):
        m = NONZERO.search(got, pos)
        if m is None:
            silence += len(got) - pos
            break
        start = m.start() - m.start() % f
        silence += start - pos
        pos = start
        at = -1
        for k in (256, 64, 16):
            key = got[pos:pos + k]
            at = expect.find(key, cursor)
            while at >= 0 and at % f:
                at = expect.find(key, at + 1)
            if at >= 0:
                break
        if at < 0:
            key = got[pos:pos + 16]
            before = expect.find(key)
            while 0 <= before and before % f:
                before = expect.find(key, before + 1)
            if 0 <= before < cursor:
                fail("received bytes %d.. (%s ...) are the file's bytes at %d%s again, or out of order: "
                     "the previous piece already reached file offset %d%s"
                     % (pos, key.hex(" "), before, ms(args, before), cursor, ms(args, cursor)))
            fail("received bytes %d..%d%s (%s ...) are neither silence nor any part of the file"
                 % (pos, pos + len(key), ms(args, pos), key.hex(" ")))
        n = min(len(got) - pos, len(expect) - at)
        d = first_diff(got[pos:pos + n], expect[at:at + n])
        if d >= 0:
            n = d
        n -= n % f
        pieces.append((pos, at, n))
        pos += n
        cursor = at + n
    found = sum(p[2] for p in pieces)
    desc = "; ".join("received %d..%d = file %d..%d%s" % (r, r + n, a, a + n, ms(args, a)) for r, a, n in pieces)
    summary = "%d bytes%s: %d bytes of silence and %d piece(s) of the file, %d of its %d bytes%s (%s)" % (
        len(got), ms(args, len(got)), silence, len(pieces), found, len(expect), ms(args, found), desc or "none")
    if not pieces:
        fail("no byte of the file received: " + summary)
    if args.from_start and pieces[0][1] != 0:
        fail("the first piece starts at file offset %d%s, not at its start: %s"
             % (pieces[0][1], ms(args, pieces[0][1]), summary))
    if args.to_end and pieces[-1][1] + pieces[-1][2] != len(expect):
        fail("the last piece ends at file offset %d, before its end (%d): %s"
             % (pieces[-1][1] + pieces[-1][2], len(expect), summary))
    if found < args.min_bytes:
        fail("only %d of the file's bytes received, expected at least %d%s: %s"
             % (found, args.min_bytes, ms(args, args.min_bytes), summary))
    if args.max_pieces and len(pieces) > args.max_pieces:
        fail("%d pieces, at most %d expected: %s" % (len(pieces), args.max_pieces, summary))
    print("pcm-check: ok: " + summary)


def cmd_sequence(args, expects, got):
    f = args.frame
    if len(got) % f:
        fail("%d bytes is not whole %d-byte frames" % (len(got), f))
    gaps = [float(g) for g in args.gap_ms.split(",")] if args.gap_ms else []
    if gaps and not args.rate:
        fail("--gap-ms needs --rate")
    if len(gaps) > max(len(expects) - 1, 0):
        fail("%d gaps given for %d files" % (len(gaps), len(expects)))
    cursor = 0
    parts = []  # (name, received offset, length, silence before it)
    for path, expect in expects:
        name = path.rsplit("/", 1)[-1]
        first_frame_nonzero(expect, f, name)
        at = nonzero_frame_at(got, cursor, f)
        if at < 0:
            fail("only silence after received byte %d%s, where %s should come next (%s)"
                 % (cursor, ms(args, cursor), name, layout(args, parts, cursor, len(got))))
        body = got[at:at + len(expect)]
        if body != expect:
            d = first_diff(body, expect)
            fail("%s does not follow the silence at received byte %d%s: byte %d of it (frame %d%s) differs: "
                 "got %s, expected %s; its first bytes are at received offset %d (%s)"
                 % (name, at, ms(args, at), d, d // f, ms(args, d), body[d:d + 8].hex(" "),
                    expect[d:d + 8].hex(" "), got.find(expect[:256], cursor), layout(args, parts, at, len(got))))
        parts.append((name, at, len(expect), at - cursor))
        cursor = at + len(expect)
    rest = nonzero_frame_at(got, cursor, f)
    if rest >= 0:
        fail("received byte %d%s, after the last file, is not silence (%s ...) (%s)"
             % (rest, ms(args, rest), got[rest:rest + 8].hex(" "), layout(args, parts, cursor, len(got))))
    summary = layout(args, parts, cursor, len(got))
    for k, want in enumerate(gaps):
        have = parts[k + 1][3] * 1000.0 / args.rate
        if abs(have - want) > args.tolerance_ms:
            fail("the silence between %s and %s lasts %.1f ms, expected %.1f +- %.0f ms (%s)"
                 % (parts[k][0], parts[k + 1][0], have, want, args.tolerance_ms, summary))
    checked = "".join("; gap %d: %.1f ms, expected %.1f ms (%+.1f ms, within +- %.0f)"
                      % (k + 1, parts[k + 1][3] * 1000.0 / args.rate, want,
                         parts[k + 1][3] * 1000.0 / args.rate - want, args.tolerance_ms)
                      for k, want in enumerate(gaps))
    print("pcm-check: ok: %s%s" % (summary, checked))


def layout(args, parts, end, total):
    """What was found so far: silence, file, silence, file, ... up to end, then the rest."""
    out = []
    for name, at, n, before in parts:
        out.append("%d bytes%s of silence" % (before, ms(args, before)))
        out.append("%s exactly (%d bytes%s at %d)" % (name, n, ms(args, n), at))
    out.append("%d bytes%s to the end" % (total - end, ms(args, total - end)))
    return ", ".join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("mode", choices=["exact", "prefix", "substring", "pieces", "sequence", "locate"])
    p.add_argument("expect")
    p.add_argument("got")
    p.add_argument("--frame", type=int, default=1)
    p.add_argument("--rate", type=float, default=0, help="bytes per second")
    p.add_argument("--lead-silence", default="0", help="bytes, or auto")
    p.add_argument("--min-lead", type=int, default=0)
    p.add_argument("--max-tail", type=int, default=0)
    p.add_argument("--min-bytes", type=int, default=0)
    p.add_argument("--to-end", action="store_true")
    p.add_argument("--from-start", action="store_true")
    p.add_argument("--max-pieces", type=int, default=0)
    p.add_argument("--offset-ms", type=float)
    p.add_argument("--tolerance-ms", type=float, default=500)
    p.add_argument("--gap-ms", help="sequence: the silences between the files, comma-separated")
    args = p.parse_args()
    if args.lead_silence != "auto" and not args.lead_silence.isdigit():
        p.error("--lead-silence takes a number of bytes or auto")
    if args.mode == "sequence":
        expects = [(name, open(name, "rb").read()) for name in args.expect.split(",")]
        try:
            got = open(args.got, "rb").read()
        except FileNotFoundError:
            fail("%s: nothing received (no such file)" % args.got)
        cmd_sequence(args, expects, got)
        return
    expect = open(args.expect, "rb").read()
    if args.mode == "locate":
        key = bytes.fromhex(args.got)
        print("pcm-check: %s first occurs at offset %d of %s" % (args.got, expect.find(key), args.expect))
        return
    try:
        got = open(args.got, "rb").read()
    except FileNotFoundError:
        fail("%s: nothing received (no such file)" % args.got)
    {"exact": cmd_exact, "prefix": cmd_prefix, "substring": cmd_substring,
     "pieces": cmd_pieces}[args.mode](args, expect, got)


if __name__ == "__main__":
    main()
