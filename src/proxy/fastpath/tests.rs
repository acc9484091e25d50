//! The loop's unit tests: starting and stopping threads, a failing epoll_wait, the dial timer
//! queue's bound, connection tokens.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::event_loop::{next_gen, token, Conn, Loop, Slot, TIMERS_SLACK};
use super::pump::{Dir, Ready};
use super::{Loops, SPECIAL, STOP, STOP_COUNT};
use crate::proxy::spec::PortMap;
use crate::proxy::{Ctx, Level};

/// A context whose log lines are kept in `lines`.
fn ctx(lines: Arc<Mutex<Vec<String>>>) -> Arc<Ctx> {
    Arc::new(Ctx {
        next_id: AtomicU64::new(0),
        counters: Default::default(),
        dialer: super::super::sock::Dialer::new(None, None).unwrap(),
        target: None,
        tap: None,
        log: super::super::Log::new(Level::Debug, move |_, l| {
            lines.lock().unwrap().push(l.to_string())
        }),
        udp_idle: Duration::from_secs(30),
        transparent: false,
        proxy_protocol: None,
        fallback_said: Default::default(),
    })
}

fn eventfd() -> OwnedFd {
    // SAFETY: a new fd, owned right away.
    unsafe { OwnedFd::from_raw_fd(libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK)) }
}

fn threads_named(name: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name))
        .count()
}

/// A later thread that cannot start (here: no fd left for its epoll set) leaves none of
/// the earlier ones running: they are stopped and joined before the error is returned.
/// Before, the first thread kept serving the listener while the caller gave up. The fd
/// limit is the process's, so the case runs in a child process of this test binary.
#[test]
fn a_loop_thread_that_cannot_start_leaves_none_of_the_others_running() {
    const CHILD: &str = "NETTOOL_TEST_LOOPS_START_CHILD";
    let name =
        "proxy::fastpath::tests::a_loop_thread_that_cannot_start_leaves_none_of_the_others_running";
    if std::env::var_os(CHILD).is_none() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", name, "--test-threads=1", "--nocapture"])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && text.contains("1 passed"),
            "the child:\n{text}"
        );
        return;
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let map = PortMap {
        proto: super::super::Proto::Tcp,
        listen: addr,
        optional: false,
        target: addr,
        more: Default::default(),
        name: None,
    };
    let lines = Arc::new(Mutex::new(Vec::new()));
    let ctx = ctx(lines.clone());
    // Room for exactly two more descriptors: the first thread's epoll set and stop eventfd.
    // SAFETY: F_GETFD only asks whether a descriptor number is open.
    let free: Vec<i32> = (0..)
        .filter(|&fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1)
        .take(2)
        .collect();
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with valid structs, in this child process only.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut old);
        let low = libc::rlimit {
            rlim_cur: free[1] as libc::rlim_t + 1,
            rlim_max: old.rlim_max,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &low), 0);
    }
    let started = Loops::start(vec![(l, map)], ctx, 3, None);
    // SAFETY: as above.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &old) };
    let e = started
        .err()
        .expect("the second thread had no fd for its epoll set");
    assert_eq!(e.raw_os_error(), Some(libc::EMFILE), "{e}");
    // Joined already; the task entry goes a moment after the thread's last instruction.
    let t = Instant::now();
    while threads_named("nettool-fast") > 0 && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(threads_named("nettool-fast"), 0, "left running");
}

/// An epoll_wait that keeps failing is said once, not every 100 ms, and the loop still
/// stops when asked (the STOP token cannot come through a failing epoll_wait). The "epoll
/// set" is an eventfd: epoll_wait fails with EINVAL every time. The retries are counted
/// from the thread's voluntary context switches (one per 100 ms sleep), not from a clock.
#[test]
fn an_epoll_wait_that_keeps_failing_is_said_once_and_the_loop_still_stops() {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(eventfd());
    let lp = Loop::new(
        eventfd(),
        stop.clone(),
        Arc::new(Vec::new()),
        Default::default(),
        ctx(lines.clone()),
    );
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // SAFETY: gettid has no failure mode.
        let _ = tid_tx.send(unsafe { libc::gettid() });
        lp.run();
        let _ = done_tx.send(());
    });
    let tid = tid_rx.recv().unwrap();
    let switches = || {
        std::fs::read_to_string(format!("/proc/self/task/{tid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let t = Instant::now();
    while switches() < 10 && t.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(switches() >= 10, "the loop thread did not retry");
    // SAFETY: an 8-byte write to our eventfd.
    unsafe {
        libc::write(
            stop.as_raw_fd(),
            &STOP_COUNT as *const u64 as *const libc::c_void,
            8,
        )
    };
    done_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the loop did not stop while epoll_wait failed");
    let lines = lines.lock().unwrap();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].starts_with("proxy event loop: epoll_wait: Invalid argument")
            && lines[0].ends_with("retrying every 100 ms (said once)"),
        "{}",
        lines[0]
    );
}

/// Entries of dials that ended do not pile up behind one that waits: 10 000 connections
/// dialled and answered behind a dial that waits its 20 s leave the queue at its bound
/// (twice the dials waiting, plus the slack), with the waiting dial's entry first.
#[test]
fn ended_dials_timers_do_not_pile_up_behind_one_that_waits() {
    let mut lp = Loop::new(
        eventfd(),
        Arc::new(eventfd()),
        Arc::new(Vec::new()),
        Default::default(),
        ctx(Default::default()),
    );
    let fd = || OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
    let conn = |id| Conn {
        id,
        listener: 0,
        peer: "127.0.0.1:1".parse().unwrap(),
        client: fd(),
        backend: fd(),
        connecting: true,
        ns_gen: 0,
        nth: 0,
        c: Ready::default(),
        b: Ready::default(),
        up: Dir::default(),
        down: Dir::default(),
    };
    lp.slots.push(Slot {
        gen: 0,
        conn: Some(conn(0)),
    });
    lp.dial_timer(0, 0);
    lp.slots.push(Slot { gen: 0, conn: None });
    let mut longest = 0;
    for id in 1..=10_000 {
        let gen = lp.slots[1].gen;
        lp.slots[1].conn = Some(conn(id));
        lp.dial_timer(1, gen);
        longest = longest.max(lp.timers.len());
        // Answered, then over: the slot moves on to its next generation.
        lp.vacate(1);
    }
    assert!(
        longest <= 2 * 2 + TIMERS_SLACK + 1,
        "the queue held {longest} entries"
    );
    assert_eq!(lp.timers.front().map(|t| (t.1, t.2)), Some((0, 0)));
}

/// Every generation a slot goes through gives connection tokens, never a listener's or the
/// stop token: with the generation wrapping at 2^32, the 2^31st reuse of a slot set the
/// SPECIAL bit and the loop thread indexed the listeners with it (a panic).
#[test]
fn a_slot_reused_past_two_to_the_31_still_gives_connection_tokens() {
    let mut gen = (1u32 << 31) - 3;
    for _ in 0..6 {
        for (idx, backend) in [(0, false), (0, true), ((1 << 31) - 1, true)] {
            let tok = token(idx, gen, backend);
            assert_eq!(tok & SPECIAL, 0, "gen {gen:#x} idx {idx}: {tok:#x}");
            assert_ne!(tok, STOP);
        }
        gen = next_gen(gen);
    }
    assert_eq!(gen, 3, "wraps to 0 after 2^31 - 1");
}
