//! Hostile VMMs at the vhost-user layer: nothing a frontend sends, or fails
//! to send, may kill or wedge the daemon. Each test does the hostile thing,
//! checks that the daemon process is alive, then connects a fresh,
//! well-behaved VMM that must be served and play a buffer in real time.
//!
//! A bad request is "refused" when the daemon NACKs it (REPLY_ACK is
//! negotiated and every request asks for a reply) or ends the connection;
//! it must never be acknowledged as a success with the session left
//! standing on a broken ring.
//!
//! Default config: stream 0 output, stream 1 input, null device.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::error::Error as StdError;
use std::fs::File;
use std::io::Write;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::thread;
use std::time::{Duration, Instant};

use vhost::vhost_user::{Error as VhuError, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo};
use vmm_sys_util::eventfd::EventFd;
use vmm_tests::frontend::{self, Queue, NUM_QUEUES};
use vmm_tests::snd::constants::code;
use vmm_tests::snd::wire::{pcm_hdr, xfer};
use vmm_tests::snd::{PcmFormat, PcmRate, SetParams, SndDriver, Status};
use vmm_tests::{ConnectOptions, Daemon, Segment, VhostUserSnd, Virtqueue};

/// 48 kHz stereo S16: 10 ms periods.
const PERIOD: u32 = 1920;
const PERIOD_T: Duration = Duration::from_millis(10);
/// A completion may not come earlier than its due time minus this.
const SLACK: Duration = Duration::from_millis(2);
/// Queue size of the hostile sessions' rings.
const QSIZE: u16 = 64;
/// How long a daemon has to end a session it should not keep.
const CLOSE_BOUND: Duration = Duration::from_secs(2);

fn params(stream: u32, period: u32) -> SetParams {
    SetParams {
        stream_id: stream,
        buffer_bytes: 4 * period,
        period_bytes: period,
        features: 0,
        channels: 2,
        format: PcmFormat::S16.code(),
        rate: PcmRate::R48000.code(),
        padding: 0,
    }
}

fn ok(snd: &mut SndDriver, code: u32, stream: u32, what: &str) {
    let r = snd
        .control(&pcm_hdr(code, stream), 4)
        .unwrap_or_else(|e| panic!("{what}: request {code:#x}: {}", chain(&e)));
    assert_eq!(
        r.status(),
        Some(Status::Ok),
        "{what}: request {code:#x} on stream {stream}"
    );
}

fn prepare(snd: &mut SndDriver, stream: u32, period: u32, what: &str) {
    let st = snd
        .set_params_raw(&params(stream, period))
        .unwrap_or_else(|e| panic!("{what}: SET_PARAMS: {}", chain(&e)));
    assert_eq!(st, Status::Ok, "{what}: SET_PARAMS");
    ok(snd, code::PCM_PREPARE, stream, what);
}

/// An error and its sources, on one line.
fn chain(e: &dyn StdError) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out += &format!(": {s}");
        src = s.source();
    }
    out
}

fn spawn() -> Daemon {
    Daemon::spawn().unwrap_or_else(|e| panic!("{e}"))
}

fn alive(daemon: &mut Daemon, what: &str) {
    if let Err(e) = daemon.check_alive() {
        panic!("the daemon died after {what}: {e}");
    }
}

/// Lines at WARN or ERROR level logged after byte `mark` of the log.
fn warnings_since(daemon: &Daemon, mark: usize) -> Vec<String> {
    let log = daemon.log();
    log.get(mark..)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .map(str::to_owned)
        .collect()
}

/// The daemon's answer to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Acknowledged as a success.
    Acked,
    /// REPLY_ACK with a failure code.
    Nacked,
    /// The connection ended (the request could not be sent or its reply
    /// never came).
    Closed(String),
    /// No answer within the request timeout, connection still up: the
    /// daemon is wedged on it.
    NoAnswer(String),
    /// Anything else (a garbled reply...).
    Other(String),
}

impl Outcome {
    fn of<T>(r: Result<T, frontend::Error>) -> Outcome {
        match r {
            Ok(_) => Outcome::Acked,
            Err(e @ frontend::Error::Hung { .. }) => Outcome::NoAnswer(chain(&e)),
            Err(frontend::Error::Request {
                source: vhost::Error::VhostUserProtocol(VhuError::BackendInternalError),
                ..
            }) => Outcome::Nacked,
            Err(
                e @ frontend::Error::Request {
                    source:
                        vhost::Error::VhostUserProtocol(
                            VhuError::Disconnected
                            | VhuError::PartialMessage
                            | VhuError::SocketBroken(_)
                            | VhuError::SocketError(_),
                        ),
                    ..
                },
            ) => Outcome::Closed(chain(&e)),
            Err(e) => Outcome::Other(chain(&e)),
        }
    }

    fn refused(&self) -> bool {
        matches!(self, Outcome::Nacked | Outcome::Closed(_))
    }
}

/// A session that sends requests one by one and remembers the first that
/// was not acknowledged.
struct Hostile {
    dev: VhostUserSnd,
    /// The first request not acknowledged, and what happened to it.
    refusal: Option<(String, Outcome)>,
    /// Rings and fds the daemon was given (kept open for the session).
    rings: Vec<Virtqueue>,
    _fds: Vec<EventFd>,
}

impl Hostile {
    /// Negotiates like QEMU (SET_OWNER up to SET_FEATURES, REPLY_ACK on).
    fn negotiate(daemon: &Daemon, memory_size: usize) -> Hostile {
        let opts = ConnectOptions {
            memory_size,
            ..ConnectOptions::default()
        };
        let dev = VhostUserSnd::connect_negotiated(daemon.socket_path(), &opts)
            .unwrap_or_else(|e| panic!("negotiation failed: {}", chain(&e)));
        Hostile {
            dev,
            refusal: None,
            rings: Vec::new(),
            _fds: Vec::new(),
        }
    }

    /// Sends one request unless an earlier one was refused; returns whether
    /// it was acknowledged.
    fn send(
        &mut self,
        what: impl Into<String>,
        f: impl FnOnce(&mut vhost::vhost_user::Frontend) -> vhost::Result<()>,
    ) -> bool {
        if self.refusal.is_some() {
            return false;
        }
        let what = what.into();
        match Outcome::of(self.dev.with_frontend("request", f)) {
            Outcome::Acked => true,
            other => {
                self.refusal = Some((what, other));
                false
            }
        }
    }

    fn mem_table(&mut self, region: VhostUserMemoryRegionInfo) -> bool {
        self.send(
            format!("SET_MEM_TABLE of {:#x} bytes", region.memory_size),
            |fe| fe.set_mem_table(&[region]).map(|_| ()),
        )
    }

    /// Sets up all four rings like QEMU, except for what `bad` changes on
    /// the txq; then SET_VRING_ENABLE on each.
    fn rings(&mut self, bad: BadRing) {
        let mem = self.dev.memory().clone();
        let mut bad = Some(bad);
        for index in 0..NUM_QUEUES {
            let q = Virtqueue::new(mem.clone(), QSIZE).unwrap();
            let mut config = self.dev.vring_config(&q).unwrap();
            let mut kick = None;
            if index == Queue::Tx.index() {
                match bad.take() {
                    Some(BadRing::UsedAddr(addr)) => config.used_ring_addr = addr,
                    Some(BadRing::Kick(fd)) => kick = Some(fd),
                    None => {}
                }
            }
            let name = Queue::ALL[index];
            self.send(format!("SET_VRING_NUM({name})"), |fe| {
                fe.set_vring_num(index, QSIZE)
            });
            self.send(format!("SET_VRING_BASE({name})"), |fe| {
                fe.set_vring_base(index, 0)
            });
            self.send(
                format!(
                    "SET_VRING_ADDR({name}, used ring at {:#x})",
                    config.used_ring_addr
                ),
                |fe| fe.set_vring_addr(index, &config),
            );
            self.send(format!("SET_VRING_CALL({name})"), |fe| {
                fe.set_vring_call(index, q.call_fd())
            });
            match kick {
                Some(fd) => {
                    self.send(format!("SET_VRING_KICK({name}, not an eventfd)"), |fe| {
                        fe.set_vring_kick(index, &fd)
                    });
                    self._fds.push(fd);
                }
                None => {
                    self.send(format!("SET_VRING_KICK({name})"), |fe| {
                        fe.set_vring_kick(index, q.kick_fd())
                    });
                }
            }
            self.rings.push(q);
        }
        for index in 0..NUM_QUEUES {
            self.send(format!("SET_VRING_ENABLE({})", Queue::ALL[index]), |fe| {
                fe.set_vring_enable(index, true)
            });
        }
    }

    /// Refused: a request was NACKed or the connection ended, now or within
    /// [`CLOSE_BOUND`]. Otherwise explains what was accepted.
    fn refusal_problem(&self, what: &str) -> Option<String> {
        match &self.refusal {
            Some((req, outcome)) if outcome.refused() => {
                eprintln!("{what}: refused at {req}: {outcome:?}");
                None
            }
            Some((req, outcome)) => Some(format!(
                "{what}: {req} was neither acknowledged nor refused: {outcome:?}"
            )),
            None if self.dev.wait_peer_closed(CLOSE_BOUND) => {
                eprintln!("{what}: every request acknowledged, then the daemon closed");
                None
            }
            None => Some(format!(
                "{what}: every request was acknowledged as a success and the daemon kept \
                 the connection up for {CLOSE_BOUND:?} (a session on a ring it cannot use)"
            )),
        }
    }

    fn check_refused(&self, what: &str) {
        if let Some(problem) = self.refusal_problem(what) {
            panic!("{problem}");
        }
    }
}

/// What to get wrong on the txq.
enum BadRing {
    /// SET_VRING_ADDR with this used ring address (frontend address space).
    UsedAddr(u64),
    /// SET_VRING_KICK with this fd (not an eventfd).
    Kick(EventFd),
}

/// A well-behaved VMM connects with `opts` and plays: after START a tx
/// buffer completes OK, one period later (never earlier), and a second one
/// a period after that.
fn vmm_plays(daemon: &mut Daemon, opts: &ConnectOptions, what: &str) -> Duration {
    alive(daemon, what);
    let t = Instant::now();
    let mut snd = SndDriver::connect(daemon.socket_path(), opts).unwrap_or_else(|e| {
        panic!(
            "after {what}, a fresh VMM was not served (gave up after {:?}): {}",
            t.elapsed(),
            chain(&e)
        )
    });
    let served = t.elapsed();
    let what = format!("the fresh VMM after {what}");
    prepare(&mut snd, 0, PERIOD, &what);
    for i in 0..2u8 {
        snd.tx(0, &vec![i; PERIOD as usize], &[]).unwrap();
    }
    let sent = Instant::now();
    ok(&mut snd, code::PCM_START, 0, &what);
    let answered = Instant::now();
    let done = snd
        .wait_io_count(Queue::Tx, 2, Duration::from_secs(2))
        .unwrap();
    assert_eq!(done.len(), 2, "{what}: tx buffers did not complete in 2 s");
    for (k, c) in done.iter().enumerate() {
        let k = k as u32 + 1;
        assert_eq!(c.status, Status::Ok, "{what}: tx completion {k}");
        assert_eq!(c.violation, None, "{what}: tx completion {k}");
        assert!(
            c.completed_at + SLACK >= sent + PERIOD_T * k,
            "{what}: tx completion {k} came {:?} after START, before its due time {:?}",
            c.completed_at.duration_since(sent),
            PERIOD_T * k
        );
        assert!(
            c.completed_at <= answered + PERIOD_T * k + Duration::from_secs(1),
            "{what}: tx completion {k} came {:?} after START",
            c.completed_at.duration_since(sent)
        );
    }
    ok(&mut snd, code::PCM_STOP, 0, &what);
    ok(&mut snd, code::PCM_RELEASE, 0, &what);
    snd.disconnect().unwrap();
    served
}

fn fresh_vmm_plays(daemon: &mut Daemon, what: &str) {
    vmm_plays(daemon, &ConnectOptions::default(), what);
}

// ---- 1. guest memory ------------------------------------------------------

#[test]
fn a_memory_region_larger_than_its_memfd_is_refused_and_the_next_vmm_is_served() {
    let what = "a 4 MiB memory region over a 1 MiB memfd";
    let mut d = spawn();
    let mark = d.log().len();
    let mut h = Hostile::negotiate(&d, 1 << 20);
    let mut region = h.dev.memory_region();
    region.memory_size = 4 << 20;
    if h.mem_table(region) {
        // Accepted: touch the part that does not exist, as a hostile guest
        // would, with a tx buffer whose PCM lies 2 MiB in.
        let mut snd = SndDriver::new(h.dev);
        let exploit = (|| -> Result<(), Box<dyn StdError>> {
            snd.dev_mut().setup_rings(QSIZE)?;
            if snd.set_params_raw(&params(0, PERIOD))? != Status::Ok
                || snd.prepare(0)? != Status::Ok
            {
                return Err("the stream could not be prepared".into());
            }
            let mem = snd.dev().memory().clone();
            let hdr = mem.alloc(4, 8)?;
            mem.write(hdr, &xfer(0))?;
            let status = mem.alloc(8, 8)?;
            let beyond = mem.base() + (2 << 20);
            let tx = snd.dev_mut().queue_mut(Queue::Tx);
            tx.add_chain(&[
                Segment::readable(hdr, 4),
                Segment::readable(beyond, PERIOD),
                Segment::writable(status, 8),
            ])?;
            tx.kick()?;
            snd.start(0)?;
            Ok(())
        })();
        thread::sleep(Duration::from_millis(300));
        let exploit = match exploit {
            Ok(()) => "a tx buffer there was queued and the stream started".to_owned(),
            Err(e) => format!("queueing a tx buffer there failed: {e}"),
        };
        alive(&mut d, &format!("{what} was acknowledged ({exploit})"));
        assert!(
            snd.dev().wait_peer_closed(CLOSE_BOUND),
            "SET_MEM_TABLE with {what} was acknowledged as a success, and the session \
             stayed up for {CLOSE_BOUND:?} after {exploit}"
        );
    } else {
        alive(&mut d, what);
        h.check_refused(what);
        drop(h);
    }
    let warned = warnings_since(&d, mark);
    assert!(
        !warned.is_empty(),
        "the daemon refused {what} without a warning in its log"
    );
    fresh_vmm_plays(&mut d, what);
}

#[test]
fn truncating_guest_memory_under_a_running_stream_does_not_kill_the_daemon() {
    let mut d = spawn();
    let mut snd = d.connect(&ConnectOptions::default()).unwrap();
    prepare(&mut snd, 0, PERIOD, "setup");
    for i in 0..4u8 {
        snd.tx(0, &vec![i; PERIOD as usize], &[]).unwrap();
    }
    ok(&mut snd, code::PCM_START, 0, "setup");
    let first = snd
        .wait_io_count(Queue::Tx, 1, Duration::from_secs(1))
        .unwrap();
    assert_eq!(first.len(), 1, "setup: the stream does not play");
    let mark = d.log().len();
    // From here on this process must not touch the guest memory either.
    let fd = snd.dev().memory().fd();
    // SAFETY: ftruncate() on our own memfd has no memory-safety
    // preconditions; nothing below reads or writes the mapping.
    let rc = unsafe { libc::ftruncate(fd, 0) };
    assert_eq!(rc, 0, "ftruncate: {}", std::io::Error::last_os_error());
    // The daemon plays the next period from the memory that is now gone.
    thread::sleep(Duration::from_millis(300));
    alive(
        &mut d,
        "the VMM truncated the guest memory under a running stream",
    );
    let closed = snd.dev().wait_peer_closed(Duration::from_secs(5));
    assert!(
        closed,
        "the daemon kept the session up for 5 s after its guest memory was truncated"
    );
    let warned = warnings_since(&d, mark);
    assert!(
        !warned.is_empty(),
        "the daemon ended the session without a warning in its log"
    );
    drop(snd);
    fresh_vmm_plays(&mut d, "truncated guest memory");
}

// ---- 2. queue sizes -------------------------------------------------------

#[test]
fn set_vring_num_of_zero_above_the_maximum_or_not_a_power_of_two_is_refused() {
    let mut d = spawn();
    let mut accepted = Vec::new();
    for num in [0u16, 2048, 3] {
        let mut h = Hostile::negotiate(&d, 1 << 20);
        let region = h.dev.memory_region();
        assert!(h.mem_table(region), "setup: {:?}", h.refusal);
        let index = Queue::Tx.index();
        h.send(format!("SET_VRING_NUM({num})"), |fe| {
            fe.set_vring_num(index, num)
        });
        match &h.refusal {
            None => accepted.push(num),
            Some((_, o)) => {
                assert!(o.refused(), "SET_VRING_NUM({num}): {o:?}");
                eprintln!("SET_VRING_NUM({num}): {o:?}");
            }
        }
        drop(h);
        fresh_vmm_plays(&mut d, &format!("SET_VRING_NUM({num})"));
    }
    assert!(
        accepted.is_empty(),
        "SET_VRING_NUM was acknowledged as a success with queue size(s) {accepted:?} \
         (sizes must be powers of two in 1..=1024)"
    );
}

// ---- 3. one bad ring ------------------------------------------------------

#[test]
fn a_used_ring_past_or_across_the_end_of_guest_memory_is_refused() {
    let mut d = spawn();
    let size = 1u64 << 20;
    let cases = [
        // One page past the end of the only region.
        ("past the end", size + 4096),
        // used.flags and used.idx are the last 4 bytes of memory; the
        // elements lie beyond.
        ("across the end", size - 4),
    ];
    let mut problems = Vec::new();
    for (name, offset) in cases {
        let mut h = Hostile::negotiate(&d, size as usize);
        let region = h.dev.memory_region();
        assert!(h.mem_table(region), "setup: {:?}", h.refusal);
        let used = h.dev.memory().host_base() + offset;
        h.rings(BadRing::UsedAddr(used));
        problems.extend(h.refusal_problem(&format!("a txq used ring {name} of guest memory")));
        drop(h);
        fresh_vmm_plays(&mut d, &format!("a used ring {name} of guest memory"));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// File descriptors that are not eventfds.
#[derive(Debug, Clone, Copy)]
enum NotEventfd {
    Pipe,
    RegularFile,
    DevNull,
}

impl NotEventfd {
    fn name(self) -> &'static str {
        match self {
            NotEventfd::Pipe => "the read end of a pipe",
            NotEventfd::RegularFile => "a regular file",
            NotEventfd::DevNull => "/dev/null",
        }
    }

    /// The fd, typed as the frontend API wants it, and what else must stay
    /// open meanwhile (a pipe's write end).
    fn make(self, dir: &std::path::Path) -> (EventFd, Option<OwnedFd>) {
        let file = match self {
            NotEventfd::Pipe => {
                let mut fds = [0; 2];
                // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
                let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
                assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
                // SAFETY: pipe2 just returned these two fds; each is owned once.
                return unsafe {
                    (
                        EventFd::from_raw_fd(fds[0]),
                        Some(OwnedFd::from_raw_fd(fds[1])),
                    )
                };
            }
            NotEventfd::RegularFile => {
                let mut f = File::create(dir.join("kick")).unwrap();
                f.write_all(&[0; 8]).unwrap();
                f
            }
            NotEventfd::DevNull => File::open("/dev/null").unwrap(),
        };
        // SAFETY: the fd comes from into_raw_fd, so it is owned once.
        (unsafe { EventFd::from_raw_fd(file.into_raw_fd()) }, None)
    }
}

#[test]
fn a_kick_fd_that_is_not_an_eventfd_is_refused() {
    let mut d = spawn();
    let dir = vmm_tests::unprivileged::tempdir("vsound-t-").unwrap();
    let mut problems = Vec::new();
    for kind in [
        NotEventfd::Pipe,
        NotEventfd::RegularFile,
        NotEventfd::DevNull,
    ] {
        let name = kind.name();
        let mut h = Hostile::negotiate(&d, 1 << 20);
        let region = h.dev.memory_region();
        assert!(h.mem_table(region), "setup: {:?}", h.refusal);
        let (kick, other_end) = kind.make(dir.path());
        h.rings(BadRing::Kick(kick));
        problems.extend(h.refusal_problem(&format!("{name} as the txq kick")));
        drop(h);
        drop(other_end);
        fresh_vmm_plays(&mut d, &format!("{name} as a kick fd"));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ---- 4. frontends that stall ----------------------------------------------

/// The real VMM must be served within this, whoever came before it.
const SERVE_BOUND: Duration = Duration::from_secs(15);

fn a_stalled_connection_does_not_block_the_next_vmm(first_bytes: &[u8], what: &str) {
    let mut d = spawn();
    let mut stalled = UnixStream::connect(d.socket_path()).unwrap();
    stalled.write_all(first_bytes).unwrap();
    // Let the daemon take it first.
    thread::sleep(Duration::from_millis(100));
    let opts = ConnectOptions {
        request_timeout: Some(SERVE_BOUND),
        ..ConnectOptions::default()
    };
    let served = vmm_plays(&mut d, &opts, what);
    eprintln!("{what}: the next VMM was served after {served:?}");
    alive(&mut d, what);
    drop(stalled);
}

#[test]
fn a_vmm_that_connects_and_says_nothing_does_not_block_the_next_one() {
    a_stalled_connection_does_not_block_the_next_vmm(&[], "a VMM that connected and said nothing");
}

#[test]
fn a_vmm_that_stalls_after_half_a_header_does_not_block_the_next_one() {
    // GET_FEATURES (1), then the first byte of the flags (version 1), and
    // nothing more of the 12-byte header.
    a_stalled_connection_does_not_block_the_next_vmm(
        &[1, 0, 0, 0, 1],
        "a VMM that sent 5 bytes of a header and stalled",
    );
}

// ---- 5. many sessions -----------------------------------------------------

fn fds_and_threads(pid: u32) -> (usize, usize) {
    let count = |dir: String| {
        std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{dir}: {e}"))
            .count()
    };
    (
        count(format!("/proc/{pid}/fd")),
        count(format!("/proc/{pid}/task")),
    )
}

/// The daemon's open fds by kind (what they link to, inode numbers left out).
fn fd_kinds(pid: u32) -> BTreeMap<String, usize> {
    let mut kinds = BTreeMap::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        let Ok(target) = std::fs::read_link(e.path()) else {
            continue;
        };
        let target = target.display().to_string();
        let kind = match target.split_once(":[") {
            Some((k, rest))
                if rest
                    .trim_end_matches(']')
                    .bytes()
                    .all(|b| b.is_ascii_digit()) =>
            {
                k.to_owned()
            }
            _ => target,
        };
        *kinds.entry(kind).or_insert(0) += 1;
    }
    kinds
}

/// What grew from `before` to `after`.
fn grown(before: &BTreeMap<String, usize>, after: &BTreeMap<String, usize>) -> String {
    after
        .iter()
        .filter_map(|(k, &n)| {
            let was = before.get(k).copied().unwrap_or(0);
            (n > was).then(|| format!("{k}: {was} -> {n}"))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The daemon's fd and thread counts once they have not moved for 300 ms
/// (threads of the previous session may still be on their way out).
fn settled_counts(pid: u32) -> (usize, usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = fds_and_threads(pid);
    let mut since = Instant::now();
    while Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
        let now = fds_and_threads(pid);
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= Duration::from_millis(300) {
            break;
        }
    }
    last
}

/// 1 ms periods keep a cycle short.
const SHORT_PERIOD: u32 = 192;

/// One session: connect, play three 1 ms buffers, disconnect.
fn play_cycle(d: &Daemon, i: usize) {
    let what = format!("cycle {i}");
    let mut snd = d
        .connect(&ConnectOptions::default())
        .unwrap_or_else(|e| panic!("{what}: {}", chain(&e)));
    prepare(&mut snd, 0, SHORT_PERIOD, &what);
    for _ in 0..3 {
        snd.tx(0, &[0x11; SHORT_PERIOD as usize], &[]).unwrap();
    }
    ok(&mut snd, code::PCM_START, 0, &what);
    let done = snd
        .wait_io_count(Queue::Tx, 3, Duration::from_secs(2))
        .unwrap();
    assert_eq!(done.len(), 3, "{what}: buffers did not complete");
    assert!(done.iter().all(|c| c.status == Status::Ok), "{what}");
    snd.disconnect().unwrap();
}

#[test]
fn a_thousand_sessions_leak_no_fd_and_no_thread_and_end_quickly() {
    const CYCLES: usize = 1000;
    const WARMUP: usize = 10;
    const EMPTY: usize = 50;
    let mut d = spawn();
    let pid = d.pid().unwrap();
    for i in 0..WARMUP {
        play_cycle(&d, i);
    }
    // Measured the same way before and after: a session connected and idle.
    let (baseline, kinds_before) = {
        let dev = VhostUserSnd::connect(d.socket_path(), &ConnectOptions::default()).unwrap();
        let c = settled_counts(pid);
        let kinds = fd_kinds(pid);
        drop(dev);
        (c, kinds)
    };
    let t = Instant::now();
    for i in WARMUP..CYCLES {
        play_cycle(&d, i);
        if i % 100 == 0 {
            alive(&mut d, &format!("{i} sessions"));
        }
    }
    let per_cycle = t.elapsed() / (CYCLES - WARMUP) as u32;
    alive(&mut d, &format!("{CYCLES} sessions"));
    let (after, kinds_after) = {
        let dev = VhostUserSnd::connect(d.socket_path(), &ConnectOptions::default()).unwrap();
        let c = settled_counts(pid);
        let kinds = fd_kinds(pid);
        drop(dev);
        (c, kinds)
    };

    // Sessions that only connect and disconnect.
    let t = Instant::now();
    for _ in 0..EMPTY {
        let mut dev = VhostUserSnd::connect(d.socket_path(), &ConnectOptions::default()).unwrap();
        dev.disconnect().unwrap();
    }
    // The last teardown is part of the cost: wait until the daemon serves again.
    drop(VhostUserSnd::connect(d.socket_path(), &ConnectOptions::default()).unwrap());
    let empty = t.elapsed();
    eprintln!(
        "sessions: {per_cycle:?} per session with a stream playing 3 ms; {:?} per empty \
         session ({EMPTY} in {empty:?}); fds/threads {baseline:?} -> {after:?}",
        empty / (EMPTY as u32 + 1)
    );
    assert_eq!(
        after.0,
        baseline.0,
        "open fds after {WARMUP} sessions: {}, after {CYCLES}: {} ({})",
        baseline.0,
        after.0,
        grown(&kinds_before, &kinds_after)
    );
    assert_eq!(
        after.1, baseline.1,
        "threads after {WARMUP} sessions: {}, after {CYCLES}: {}",
        baseline.1, after.1
    );
    // A teardown that waits on a sleeping thread (100 ms each, as the hang
    // watchdog once did) takes 5 s for 50; ~8 ms each is what it costs here.
    assert!(
        empty < Duration::from_secs(4),
        "{EMPTY} empty sessions took {empty:?} (does a teardown wait on a sleep?)"
    );
    fresh_vmm_plays(&mut d, &format!("{CYCLES} sessions"));
}

// ---- 6. out of threads ----------------------------------------------------

/// A pids cgroup (v1 `pids` hierarchy, or v2 with the pids controller) of
/// our own, removed on drop.
struct PidsCgroup {
    dir: std::path::PathBuf,
}

impl PidsCgroup {
    fn new() -> PidsCgroup {
        let name = format!("vsound-test-{}", std::process::id());
        let candidates = [
            std::path::PathBuf::from("/sys/fs/cgroup/pids"),
            std::path::PathBuf::from("/sys/fs/cgroup"),
        ];
        for root in candidates {
            if !root.join("cgroup.procs").exists() {
                continue;
            }
            let dir = root.join(&name);
            if std::fs::create_dir(&dir).is_ok() && dir.join("pids.max").exists() {
                return PidsCgroup { dir };
            }
            let _ = std::fs::remove_dir(&dir);
        }
        panic!(
            "no pids cgroup could be created (run as root on a machine with the pids controller)"
        );
    }

    fn set_max(&self, max: &str) {
        std::fs::write(self.dir.join("pids.max"), max).unwrap();
    }

    fn add(&self, pid: u32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string()).unwrap();
    }

    fn current(&self) -> usize {
        std::fs::read_to_string(self.dir.join("pids.current"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for PidsCgroup {
    fn drop(&mut self) {
        // Move everything back to the root, then remove the group.
        if let (Some(root), Ok(procs)) = (
            self.dir.parent(),
            std::fs::read_to_string(self.dir.join("cgroup.procs")),
        ) {
            for p in procs.lines() {
                let _ = std::fs::write(root.join("cgroup.procs"), p);
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[test]
fn running_out_of_threads_for_a_connection_is_retried_and_never_ends_the_daemon() {
    let what = "a connection's threads could not be started";
    let mut d = spawn();
    let cg = PidsCgroup::new();
    cg.add(d.pid().unwrap());
    // The idle daemon has built the next connection's device and waits in
    // accept; serving a connection needs more threads than it has now.
    thread::sleep(Duration::from_millis(200));
    cg.set_max(&cg.current().to_string());
    let mark = d.log().len();
    let opts = ConnectOptions {
        connect_timeout: Duration::from_secs(2),
        request_timeout: Some(Duration::from_secs(2)),
        ..ConnectOptions::default()
    };
    for attempt in 1..=2 {
        let r = SndDriver::connect(d.socket_path(), &opts);
        assert!(
            r.is_err(),
            "{what}: attempt {attempt} was served with no thread to spare"
        );
        alive(&mut d, what);
    }
    let refused_lines = || {
        d.log()[mark..]
            .matches("cannot serve a VMM connection")
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    while refused_lines() < 2 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    let refused = refused_lines();
    assert!(
        refused >= 2,
        "{what}: {refused} 'cannot serve a VMM connection' lines for 2 attempts; log since: {}",
        &d.log()[mark..]
    );
    cg.set_max("max");
    fresh_vmm_plays(&mut d, what);
}
