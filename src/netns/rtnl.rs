//! A small synchronous netlink client: one request, its replies, its ack.
//!
//! The socket is created on the calling thread, so it lives in that thread's network
//! namespace. Use it inside [`crate::netns::NetNs::run`] to talk to another namespace.

use std::fmt::Debug;
use std::io;

use netlink_packet_core::{
    NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable,
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_sys::{Socket, SocketAddr};

/// What went wrong talking to the kernel over netlink.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The socket could not be opened, sent on or read from.
    #[error("netlink socket: {0}")]
    Io(#[from] io::Error),
    /// The kernel rejected the request with an errno.
    #[error("{what}: {source}")]
    Kernel {
        /// The request that failed, in words.
        what: String,
        /// The errno the kernel answered with.
        source: io::Error,
    },
    /// A reply could not be decoded.
    #[error("netlink decode: {0}")]
    Decode(String),
}

impl NetlinkError {
    /// The errno of a kernel rejection, if that is what this is.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// A netlink socket of one protocol (route, sock_diag, ...), bound in the current thread's namespace.
pub(crate) struct Netlink {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Netlink {
    /// Open a socket of `protocol` (e.g. `netlink_sys::protocols::NETLINK_ROUTE`).
    pub(crate) fn open(protocol: isize) -> Result<Self, NetlinkError> {
        let mut socket = Socket::new(protocol)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        // Extended acks carry the kernel's error string; ignore failure on old kernels.
        let _ = socket.set_ext_ack(true);
        Ok(Netlink {
            socket,
            seq: 1,
            buf: vec![0; 1 << 16],
        })
    }

    /// Send a dump request and collect every reply message.
    pub(crate) fn dump<M>(&mut self, msg: M, what: &str) -> Result<Vec<M>, NetlinkError>
    where
        M: NetlinkSerializable + NetlinkDeserializable + Debug,
    {
        DUMPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.request(msg, NLM_F_REQUEST | NLM_F_DUMP, what)
    }

    /// Requests sent on this socket so far (tests count dumps with it).
    #[cfg(test)]
    pub(crate) fn requests(&self) -> u32 {
        self.seq.wrapping_sub(1)
    }

    /// Send a change request (flags beyond REQUEST|ACK, e.g. CREATE|EXCL) and wait for its ack.
    pub(crate) fn change<M>(&mut self, msg: M, flags: u16, what: &str) -> Result<(), NetlinkError>
    where
        M: NetlinkSerializable + NetlinkDeserializable + Debug,
    {
        self.request(msg, NLM_F_REQUEST | NLM_F_ACK | flags, what)
            .map(|_| ())
    }

    /// Send a request that gets exactly one answer (e.g. RTM_GETNSID).
    pub(crate) fn get<M>(&mut self, msg: M, what: &str) -> Result<Vec<M>, NetlinkError>
    where
        M: NetlinkSerializable + NetlinkDeserializable + Debug,
    {
        self.request(msg, NLM_F_REQUEST | NLM_F_ACK, what)
    }

    fn request<M>(&mut self, msg: M, flags: u16, what: &str) -> Result<Vec<M>, NetlinkError>
    where
        M: NetlinkSerializable + NetlinkDeserializable + Debug,
    {
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        self.seq = self.seq.wrapping_add(1);
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        packet.finalize();
        let mut out = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut out);
        self.socket.send(&out, 0)?;

        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let wants_ack = flags & NLM_F_ACK != 0;
        let mut replies = Vec::new();
        loop {
            let n = self.socket.recv(&mut &mut self.buf[..], 0)?;
            let mut offset = 0;
            while offset < n {
                let bytes = &self.buf[offset..n];
                let reply = NetlinkMessage::<M>::deserialize(bytes)
                    .map_err(|e| NetlinkError::Decode(format!("{what}: {e}")))?;
                let len = reply.header.length as usize;
                if reply.header.sequence_number != self.seq {
                    // A stale reply from an earlier request: skip it.
                    offset += len.max(1);
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::Error(err) => {
                        return match err.code {
                            None => Ok(replies),
                            Some(code) => Err(NetlinkError::Kernel {
                                what: what.to_string(),
                                source: io::Error::from_raw_os_error(-code.get()),
                            }),
                        };
                    }
                    NetlinkPayload::InnerMessage(m) => {
                        replies.push(m);
                        if !dump && !wants_ack {
                            return Ok(replies);
                        }
                    }
                    _ => {}
                }
                if len == 0 {
                    break;
                }
                offset += len;
            }
        }
    }
}

/// Netlink dumps this process made (doctor's snapshot reports how many one run needed).
pub(crate) static DUMPS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Grows a netlink socket's receive buffer to `bytes` (SO_RCVBUFFORCE as root, else as far as
/// rmem_max lets SO_RCVBUF go): event sockets get bursts, and a full buffer loses them (ENOBUFS).
pub(crate) fn grow_receive_buffer(socket: &mut Socket, bytes: usize) {
    use std::os::fd::AsRawFd;
    let size = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: setsockopt with a valid fd and an int option value.
    let forced = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            &size as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if forced != 0 {
        let _ = socket.set_rx_buf_sz(bytes);
    }
}

/// The payloads of the messages of type `message_type` in one datagram read from a netlink
/// socket (events arrive several to a datagram; a truncated tail ends the walk).
pub(crate) fn payloads_of_type(buf: &[u8], message_type: u16) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 16 <= buf.len() {
        let Ok(msg) = netlink_packet_core::NetlinkBuffer::new_checked(&buf[off..]) else {
            break;
        };
        let len = msg.length() as usize;
        if len < 16 {
            break;
        }
        if msg.message_type() == message_type {
            out.push(&buf[off + 16..off + len]);
        }
        off += (len + 3) & !3;
    }
    out
}
