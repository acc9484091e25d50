//! nf_tables trace events (NFT_MSG_TRACE on NFNLGRP_NFTRACE): the socket and a small decoder.
//!
//! The kernel sends one message per rule that decides something, per chain return and per
//! policy, for every packet whose `nftrace` bit is set. The socket is opened inside the traced
//! namespace (in [`crate::netns::NetNs::run`]) and keeps that namespace for its life.

use std::io;
use std::os::fd::AsRawFd;

use netlink_packet_core::NlasIterator;
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};
use serde::Serialize;

/// NFNLGRP_NFTRACE: the multicast group of trace events.
const NFNLGRP_NFTRACE: u32 = 9;
/// NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_TRACE.
const NFT_TRACE_MSG_TYPE: u16 = (10 << 8) | 17;

const NFTA_TRACE_TABLE: u16 = 1;
const NFTA_TRACE_CHAIN: u16 = 2;
const NFTA_TRACE_RULE_HANDLE: u16 = 3;
const NFTA_TRACE_TYPE: u16 = 4;
const NFTA_TRACE_VERDICT: u16 = 5;
const NFTA_TRACE_ID: u16 = 6;
const NFTA_TRACE_NETWORK_HEADER: u16 = 8;
const NFTA_TRACE_TRANSPORT_HEADER: u16 = 9;
const NFTA_TRACE_IIF: u16 = 10;
const NFTA_TRACE_OIF: u16 = 12;
const NFTA_TRACE_MARK: u16 = 14;
const NFTA_TRACE_NFPROTO: u16 = 15;
const NFTA_TRACE_POLICY: u16 = 16;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;

/// What kind of trace event this is (enum nft_trace_types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum TraceKind {
    /// A rule matched and gave a verdict (continue included).
    Rule,
    /// The end of a chain that was jumped to: back to the caller.
    Return,
    /// The end of a base chain: its policy decided.
    Policy,
    /// Something this decoder does not know.
    Other,
}

/// One decoded NFT_MSG_TRACE message.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct NftTrace {
    /// The kernel's trace id (same for every event of one packet in one namespace).
    pub id: u32,
    /// Event kind (None when the attribute was missing).
    pub kind: Option<TraceKind>,
    /// nfgenmsg family: 1 inet, 2 ip, 10 ip6, 7 bridge, 5 netdev, 3 arp.
    pub family: u8,
    /// NFTA_TRACE_NFPROTO: the packet's protocol family (2 ipv4, 10 ipv6).
    pub nfproto: Option<u32>,
    /// The table.
    pub table: String,
    /// The chain.
    pub chain: String,
    /// The rule handle (rule events only).
    pub rule_handle: Option<u64>,
    /// The verdict code (NF_DROP 0, NF_ACCEPT 1, NFT_CONTINUE -1, NFT_JUMP -3, ...).
    pub verdict: Option<i32>,
    /// The chain a jump/goto verdict goes to.
    pub verdict_chain: Option<String>,
    /// The policy of a base chain (policy events).
    pub policy: Option<u32>,
    /// Input interface index.
    pub iif: Option<u32>,
    /// Output interface index.
    pub oif: Option<u32>,
    /// Packet mark.
    pub mark: Option<u32>,
    /// The IP header (and what follows) as the kernel copied it.
    pub network_header: Vec<u8>,
    /// The transport header, when the kernel sent it apart.
    pub transport_header: Vec<u8>,
}

impl NftTrace {
    /// The verdict in nft's words: accept, drop, continue, jump CHAIN, return...
    pub(crate) fn verdict_word(&self) -> Option<String> {
        let code = match (self.kind, self.verdict, self.policy) {
            (Some(TraceKind::Policy), _, Some(p)) => p as i32,
            (_, Some(v), _) => v,
            (_, None, Some(p)) => p as i32,
            _ => return None,
        };
        Some(verdict_name(code, self.verdict_chain.as_deref()))
    }
}

/// nf_tables verdict code in nft's words.
pub(crate) fn verdict_name(code: i32, chain: Option<&str>) -> String {
    let with = |w: &str| match chain {
        Some(c) => format!("{w} {c}"),
        None => w.to_string(),
    };
    match code {
        0 => "drop".into(),
        1 => "accept".into(),
        2 => "stolen".into(),
        3 => "queue".into(),
        4 => "repeat".into(),
        5 => "stop".into(),
        -1 => "continue".into(),
        -2 => "break".into(),
        -3 => with("jump"),
        -4 => with("goto"),
        -5 => "return".into(),
        // NF_QUEUE with a queue number in the upper bits.
        c if c & 0xff == 3 => format!("queue {}", (c as u32) >> 16),
        c => format!("verdict {c}"),
    }
}

fn be32(v: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?))
}

fn be64(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.get(..8)?.try_into().ok()?))
}

fn string(v: &[u8]) -> String {
    let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
    String::from_utf8_lossy(&v[..end]).into_owned()
}

/// Decode one NFT_MSG_TRACE payload (after the netlink header): nfgenmsg + attributes.
/// Returns None when it is not a trace message we can read; never panics on input.
pub(crate) fn decode_trace(payload: &[u8]) -> Option<NftTrace> {
    let family = *payload.first()?;
    let attrs = payload.get(4..)?;
    let mut t = NftTrace {
        family,
        ..Default::default()
    };
    let mut has_id = false;
    for nla in NlasIterator::new(attrs) {
        let nla = nla.ok()?;
        let v = nla.value();
        match nla.kind() & 0x3fff {
            NFTA_TRACE_TABLE => t.table = string(v),
            NFTA_TRACE_CHAIN => t.chain = string(v),
            NFTA_TRACE_RULE_HANDLE => t.rule_handle = be64(v),
            NFTA_TRACE_TYPE => {
                t.kind = be32(v).map(|k| match k {
                    1 => TraceKind::Policy,
                    2 => TraceKind::Return,
                    3 => TraceKind::Rule,
                    _ => TraceKind::Other,
                })
            }
            NFTA_TRACE_VERDICT => {
                for inner in NlasIterator::new(v) {
                    let Ok(inner) = inner else { break };
                    match inner.kind() & 0x3fff {
                        NFTA_VERDICT_CODE => t.verdict = be32(inner.value()).map(|c| c as i32),
                        NFTA_VERDICT_CHAIN => t.verdict_chain = Some(string(inner.value())),
                        _ => {}
                    }
                }
            }
            NFTA_TRACE_ID => {
                has_id = true;
                t.id = be32(v)?;
            }
            NFTA_TRACE_NETWORK_HEADER => t.network_header = v.to_vec(),
            NFTA_TRACE_TRANSPORT_HEADER => t.transport_header = v.to_vec(),
            NFTA_TRACE_IIF => t.iif = be32(v),
            NFTA_TRACE_OIF => t.oif = be32(v),
            NFTA_TRACE_MARK => t.mark = be32(v),
            NFTA_TRACE_NFPROTO => t.nfproto = be32(v),
            NFTA_TRACE_POLICY => t.policy = be32(v),
            _ => {}
        }
    }
    has_id.then_some(t)
}

/// Split a buffer read from a netlink socket into its trace messages.
pub(crate) fn decode_datagram(buf: &[u8]) -> Vec<NftTrace> {
    crate::netns::rtnl::payloads_of_type(buf, NFT_TRACE_MSG_TYPE)
        .into_iter()
        .filter_map(decode_trace)
        .collect()
}

/// A netlink socket subscribed to trace events of the namespace it was opened in.
pub(crate) struct TraceSocket {
    socket: Socket,
}

impl TraceSocket {
    /// Open and subscribe. Call inside `NetNs::run`: the socket belongs to that namespace.
    pub(crate) fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind_auto()?;
        crate::netns::rtnl::grow_receive_buffer(&mut socket, 64 << 20);
        socket.add_membership(NFNLGRP_NFTRACE)?;
        socket.set_non_blocking(true)?;
        Ok(TraceSocket { socket })
    }

    /// The raw fd (for poll).
    pub(crate) fn raw_fd(&self) -> i32 {
        self.socket.as_raw_fd()
    }

    /// Read up to `lens.len()` datagrams in one recvmmsg without blocking, each into its
    /// `slot`-byte part of `buf`; their lengths go to `lens`. Ok(0) when nothing is queued.
    pub(crate) fn read_batch(
        &self,
        buf: &mut [u8],
        slot: usize,
        lens: &mut [usize],
    ) -> io::Result<usize> {
        let n = lens.len().min(buf.len() / slot.max(1));
        let mut iovs: Vec<libc::iovec> = buf
            .chunks_mut(slot)
            .take(n)
            .map(|c| libc::iovec {
                iov_base: c.as_mut_ptr().cast(),
                iov_len: c.len(),
            })
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = iovs
            .iter_mut()
            .map(|iov| {
                // SAFETY: an all-zero msghdr is valid (no name, no control data).
                let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
                h.msg_iov = iov;
                h.msg_iovlen = 1;
                libc::mmsghdr {
                    msg_hdr: h,
                    msg_len: 0,
                }
            })
            .collect();
        // SAFETY: msgs points at n mmsghdr whose iovecs point into buf, alive for the call.
        let got = unsafe {
            libc::recvmmsg(
                self.raw_fd(),
                msgs.as_mut_ptr(),
                msgs.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if got < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::WouldBlock {
                Ok(0)
            } else {
                Err(e)
            };
        }
        for (len, m) in lens.iter_mut().zip(&msgs).take(got as usize) {
            *len = m.msg_len as usize;
        }
        Ok(got as usize)
    }

    /// Messages the kernel dropped because the receive buffer was full (SK_MEMINFO_DROPS):
    /// every lost event is counted, where ENOBUFS only says that some were.
    pub(crate) fn dropped(&self) -> Option<u64> {
        socket_drops(self.raw_fd())
    }
}

/// SO_MEMINFO (asm-generic/socket.h) and the index of the drop counter in its answer.
const SO_MEMINFO: libc::c_int = 55;
const SK_MEMINFO_DROPS: usize = 8;

/// The count of messages a socket's owner lost to a full buffer (sk_drops).
fn socket_drops(fd: i32) -> Option<u64> {
    let mut info = [0u32; 16];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: the kernel writes at most len bytes of u32 counters into info.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    (rc == 0 && len as usize > SK_MEMINFO_DROPS * 4).then(|| info[SK_MEMINFO_DROPS] as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nla(kind: u16, v: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&((4 + v.len()) as u16).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(v);
        while out.len() % 4 != 0 {
            out.push(0);
        }
        out
    }

    #[test]
    fn decodes_a_rule_event_with_a_drop_verdict() {
        let mut p = vec![1u8, 0, 0, 0];
        p.extend(nla(NFTA_TRACE_TABLE, b"user\0"));
        p.extend(nla(NFTA_TRACE_CHAIN, b"input\0"));
        p.extend(nla(NFTA_TRACE_RULE_HANDLE, &2u64.to_be_bytes()));
        p.extend(nla(NFTA_TRACE_TYPE, &3u32.to_be_bytes()));
        let verdict = nla(NFTA_VERDICT_CODE, &0u32.to_be_bytes());
        p.extend(nla(NFTA_TRACE_VERDICT | 0x8000, &verdict));
        p.extend(nla(NFTA_TRACE_ID, &0x7e81e36du32.to_be_bytes()));
        let t = decode_trace(&p).unwrap();
        assert_eq!(t.table, "user");
        assert_eq!(t.chain, "input");
        assert_eq!(t.rule_handle, Some(2));
        assert_eq!(t.kind, Some(TraceKind::Rule));
        assert_eq!(t.verdict_word().as_deref(), Some("drop"));
        assert_eq!(t.id, 0x7e81e36d);
    }

    #[test]
    fn garbage_is_not_a_trace() {
        assert!(decode_trace(&[]).is_none());
        assert!(decode_trace(&[1, 0, 0, 0, 200, 0, 1, 0]).is_none());
        assert!(decode_datagram(&[0xff; 40]).is_empty());
    }
}
