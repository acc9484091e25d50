//! pcapng output: one section per file, an interface description block per captured interface
//! (named for what it is, with its namespace, container and engine in the description), enhanced
//! packet blocks with an optional comment, interface statistics at the end; size-based rotation.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::CaptureError;

/// What an interface description block says about one interface.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InterfaceDesc {
    /// if_name: `container:web/eth0`, `host/docker0`, `lab:NAME/web/eth0`.
    pub name: String,
    /// if_description: namespace, container, engine.
    pub description: String,
    /// LINKTYPE_ number.
    pub linktype: u16,
    /// Snap length.
    pub snaplen: u32,
}

fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

fn option(buf: &mut Vec<u8>, code: u16, value: &[u8]) {
    buf.extend_from_slice(&code.to_le_bytes());
    buf.extend_from_slice(&(value.len() as u16).to_le_bytes());
    buf.extend_from_slice(value);
    buf.resize(pad4(buf.len()), 0);
}

/// Wrap `body` (already 4-aligned) as a block of `kind`.
fn block(kind: u32, body: &[u8]) -> Vec<u8> {
    let total = (12 + body.len()) as u32;
    let mut b = Vec::with_capacity(total as usize);
    b.extend_from_slice(&kind.to_le_bytes());
    b.extend_from_slice(&total.to_le_bytes());
    b.extend_from_slice(body);
    b.extend_from_slice(&total.to_le_bytes());
    b
}

fn section_header() -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&0x1A2B_3C4Du32.to_le_bytes());
    body.extend_from_slice(&1u16.to_le_bytes());
    body.extend_from_slice(&0u16.to_le_bytes());
    body.extend_from_slice(&(-1i64).to_le_bytes());
    option(
        &mut body,
        4,
        format!("nettool {} capture", env!("CARGO_PKG_VERSION")).as_bytes(),
    );
    body.extend_from_slice(&[0, 0, 0, 0]);
    block(0x0A0D_0D0A, &body)
}

fn interface_block(d: &InterfaceDesc) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&d.linktype.to_le_bytes());
    body.extend_from_slice(&0u16.to_le_bytes());
    body.extend_from_slice(&d.snaplen.to_le_bytes());
    option(&mut body, 2, d.name.as_bytes());
    option(&mut body, 3, d.description.as_bytes());
    // if_tsresol: nanoseconds, what the ring gives.
    option(&mut body, 9, &[9]);
    body.extend_from_slice(&[0, 0, 0, 0]);
    block(1, &body)
}

fn ts_parts(ts: Duration) -> (u32, u32) {
    let ns = ts.as_nanos() as u64;
    ((ns >> 32) as u32, ns as u32)
}

/// Size-based rotation, like tcpdump's -C/-W.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rotation {
    /// Start a new file once this many bytes were written (None: one file).
    pub max_bytes: Option<u64>,
    /// Keep at most this many files, reusing names in a ring (None: no limit).
    pub max_files: Option<u32>,
}

/// The name of file number `n`: FILE, then FILE1, FILE2... (tcpdump's -C naming).
pub fn rotated_name(base: &Path, n: u32) -> PathBuf {
    if n == 0 {
        return base.to_path_buf();
    }
    let mut s = base.as_os_str().to_os_string();
    s.push(n.to_string());
    PathBuf::from(s)
}

/// A pcapng writer over one file or a rotating set of files.
#[derive(Debug)]
pub struct PcapngWriter {
    base: PathBuf,
    rotation: Rotation,
    file_no: u32,
    files: Vec<PathBuf>,
    out: BufWriter<File>,
    written: u64,
    interfaces: Vec<InterfaceDesc>,
}

fn pcap_err(path: &Path, e: impl std::fmt::Display) -> CaptureError {
    CaptureError::Pcap {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

fn create(path: &Path) -> Result<BufWriter<File>, CaptureError> {
    // Written as root: never through a symlink, mode 0600.
    let f = crate::tap::open_private(path, false).map_err(|e| match e {
        crate::tap::TapError::Open { error, .. } => {
            pcap_err(path, format!("cannot create: {error}"))
        }
    })?;
    Ok(BufWriter::with_capacity(1 << 20, f))
}

impl PcapngWriter {
    /// Create `path` (emptied, 0600).
    pub fn create(path: &Path, rotation: Rotation) -> Result<Self, CaptureError> {
        let mut out = create(path)?;
        let shb = section_header();
        out.write_all(&shb).map_err(|e| pcap_err(path, e))?;
        Ok(PcapngWriter {
            base: path.to_path_buf(),
            rotation,
            file_no: 0,
            files: vec![path.to_path_buf()],
            out,
            written: shb.len() as u64,
            interfaces: Vec::new(),
        })
    }

    /// Every file written so far (rotation), in order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    fn current(&self) -> PathBuf {
        let n = match self.rotation.max_files {
            Some(w) if w > 0 => self.file_no % w,
            _ => self.file_no,
        };
        rotated_name(&self.base, n)
    }

    /// Add an interface; returns its id for [`write_packet`](Self::write_packet).
    pub fn add_interface(&mut self, d: InterfaceDesc) -> Result<u32, CaptureError> {
        let b = interface_block(&d);
        self.out
            .write_all(&b)
            .map_err(|e| pcap_err(&self.current(), e))?;
        self.written += b.len() as u64;
        self.interfaces.push(d);
        Ok(self.interfaces.len() as u32 - 1)
    }

    fn rotate(&mut self) -> Result<(), CaptureError> {
        self.out.flush().map_err(|e| pcap_err(&self.current(), e))?;
        self.file_no += 1;
        let path = self.current();
        self.out = create(&path)?;
        if !self.files.contains(&path) {
            self.files.push(path.clone());
        }
        let mut head = section_header();
        for d in &self.interfaces {
            head.extend(interface_block(d));
        }
        self.out.write_all(&head).map_err(|e| pcap_err(&path, e))?;
        self.written = head.len() as u64;
        Ok(())
    }

    /// Append one packet seen on interface `id`, with an optional comment.
    pub fn write_packet(
        &mut self,
        id: u32,
        ts: Duration,
        wire_len: u32,
        data: &[u8],
        comment: Option<&str>,
    ) -> Result<(), CaptureError> {
        if let Some(max) = self.rotation.max_bytes {
            if self.written >= max {
                self.rotate()?;
            }
        }
        let opts_len = comment.map_or(0, |c| 4 + pad4(c.len()) + 4);
        let total = 32 + pad4(data.len()) + opts_len;
        let (hi, lo) = ts_parts(ts);
        let mut head = [0u8; 28];
        head[0..4].copy_from_slice(&6u32.to_le_bytes());
        head[4..8].copy_from_slice(&(total as u32).to_le_bytes());
        head[8..12].copy_from_slice(&id.to_le_bytes());
        head[12..16].copy_from_slice(&hi.to_le_bytes());
        head[16..20].copy_from_slice(&lo.to_le_bytes());
        head[20..24].copy_from_slice(&(data.len() as u32).to_le_bytes());
        head[24..28].copy_from_slice(&wire_len.max(data.len() as u32).to_le_bytes());
        let path_err = |e| pcap_err(&self.base, e);
        let out = &mut self.out;
        let mut w = || -> std::io::Result<()> {
            out.write_all(&head)?;
            out.write_all(data)?;
            out.write_all(&[0u8; 3][..pad4(data.len()) - data.len()])?;
            if let Some(c) = comment {
                let mut o = Vec::with_capacity(opts_len);
                option(&mut o, 1, c.as_bytes());
                o.extend_from_slice(&[0, 0, 0, 0]);
                out.write_all(&o)?;
            }
            out.write_all(&(total as u32).to_le_bytes())
        };
        w().map_err(path_err)?;
        self.written += total as u64;
        Ok(())
    }

    /// Interface statistics (packets accepted by the filter, dropped by the kernel) for `id`.
    pub fn write_statistics(
        &mut self,
        id: u32,
        ts: Duration,
        accepted: u64,
        dropped: u64,
    ) -> Result<(), CaptureError> {
        let (hi, lo) = ts_parts(ts);
        let mut body = Vec::new();
        body.extend_from_slice(&id.to_le_bytes());
        body.extend_from_slice(&hi.to_le_bytes());
        body.extend_from_slice(&lo.to_le_bytes());
        option(&mut body, 6, &accepted.to_le_bytes()); // isb_filteraccept
        option(&mut body, 7, &dropped.to_le_bytes()); // isb_osdrop
        body.extend_from_slice(&[0, 0, 0, 0]);
        let b = block(5, &body);
        self.out.write_all(&b).map_err(|e| pcap_err(&self.base, e))
    }

    /// Flush buffered blocks to the file.
    pub fn flush(&mut self) -> Result<(), CaptureError> {
        self.out.flush().map_err(|e| pcap_err(&self.base, e))
    }
}
