//! Unit tests of the batched paths: how datagrams are grouped into UDP_SEGMENT messages and
//! how a GRO receive is split.

use super::recv::segments;
use super::send::plan;

fn msgs(sizes: &[usize], gso: bool) -> Vec<(usize, usize, usize)> {
    let bufs: Vec<Vec<u8>> = sizes.iter().map(|n| vec![0u8; *n]).collect();
    let d: Vec<&[u8]> = bufs.iter().map(|b| b.as_slice()).collect();
    plan(&d, gso)
        .into_iter()
        .map(|m| (m.first, m.count, m.seg))
        .collect()
}

#[test]
fn plan_groups_equal_runs_the_last_may_be_shorter() {
    // Equal sizes, then a shorter one ends the run; a larger one starts a new one.
    assert_eq!(
        msgs(&[100, 100, 100, 40, 100, 200, 200], true),
        vec![(0, 4, 100), (4, 1, 100), (5, 2, 200)]
    );
    // Without GSO, one message per datagram.
    assert_eq!(
        msgs(&[100, 100, 40], false),
        vec![(0, 1, 100), (1, 1, 100), (2, 1, 40)]
    );
    // An empty datagram is never part of a run.
    assert_eq!(
        msgs(&[0, 0, 10, 0], true),
        vec![(0, 1, 0), (1, 1, 0), (2, 1, 10), (3, 1, 0)]
    );
}

#[test]
fn plan_keeps_within_the_kernels_segment_and_size_limits() {
    // 1400-byte datagrams: 46 fit in 65 507 bytes.
    let m = msgs(&[1400; 100], true);
    assert_eq!(m, vec![(0, 46, 1400), (46, 46, 1400), (92, 8, 1400)]);
    // Small ones: at most GSO_MAX_SEGS per message.
    let m = msgs(&[10; 130], true);
    assert_eq!(m, vec![(0, 64, 10), (64, 64, 10), (128, 2, 10)]);
    // A datagram too large to share a message goes alone.
    let m = msgs(&[40_000, 40_000, 60_000], true);
    assert_eq!(m, vec![(0, 1, 40_000), (1, 1, 40_000), (2, 1, 60_000)]);
}

#[test]
fn a_gro_slot_splits_at_its_segment_size() {
    let data: Vec<u8> = (0..25u8).collect();
    let parts: Vec<&[u8]> = segments(&data, 10).collect();
    assert_eq!(parts, vec![&data[..10], &data[10..20], &data[20..]]);
    // No GRO: one datagram, even an empty one.
    assert_eq!(segments(&data, 0).count(), 1);
    assert_eq!(segments(&[], 0).collect::<Vec<_>>(), vec![&[] as &[u8]]);
}

/// A receive error on a backend socket: "unreachable" is a refusal (the --target-netns
/// check), the other errors an ICMP message or a send refusal gives are about datagrams (said,
/// the flow goes on), and only the rest ends the flow.
#[test]
fn a_backend_error_about_datagrams_leaves_the_flow_open() {
    use super::reply::{got_error, Got};
    let got = |errno: i32| match got_error(std::io::Error::from_raw_os_error(errno)) {
        Got::Refused(_) => "refused",
        Got::Other(_) => "said",
        Got::Failed(_) => "ends",
        Got::Nothing => "nothing",
        Got::Datagrams(_) => "datagrams",
    };
    for errno in [libc::ECONNREFUSED, libc::ENETUNREACH, libc::EHOSTUNREACH] {
        assert_eq!(got(errno), "refused", "errno {errno}");
    }
    for errno in [
        libc::EMSGSIZE,
        libc::EACCES,
        libc::ENOPROTOOPT,
        libc::EPERM,
        libc::ENOBUFS,
    ] {
        assert_eq!(got(errno), "said", "errno {errno}");
    }
    assert_eq!(got(libc::EAGAIN), "nothing");
    assert_eq!(got(libc::EBADF), "ends");
}
