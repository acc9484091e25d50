//! `--streams DIR`: one file per connection and direction, like tcpflow
//! (`c000001-10.0.0.1.40000-10.0.0.2.80` holds what the client sent).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::path::PathBuf;

use super::event::{Direction, Event};
use super::{open_private, Sink};

/// Writes each direction of each connection to its own file.
pub struct StreamsSink {
    dir: PathBuf,
    open: HashMap<(u64, Direction), BufWriter<File>>,
}

impl StreamsSink {
    /// Create DIR (0700) if needed.
    pub fn new(dir: PathBuf) -> Result<Self, super::TapError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|error| super::TapError::Open {
                path: dir.clone(),
                error,
            })?;
        Ok(StreamsSink {
            dir,
            open: HashMap::new(),
        })
    }
}

fn dotted(a: &SocketAddr) -> String {
    format!("{}.{}", a.ip(), a.port())
}

impl Sink for StreamsSink {
    fn name(&self) -> String {
        format!("streams to {}", self.dir.display())
    }

    fn event(&mut self, ev: &Event) -> std::io::Result<()> {
        match ev {
            Event::Data {
                conn, dir, bytes, ..
            } => {
                let key = (conn.id, *dir);
                if !self.open.contains_key(&key) {
                    let (src, dst) = match dir {
                        Direction::ClientToServer => (&conn.client, &conn.backend),
                        Direction::ServerToClient => (&conn.backend, &conn.client),
                    };
                    let path =
                        self.dir
                            .join(format!("c{:06}-{}-{}", conn.id, dotted(src), dotted(dst)));
                    let f = open_private(&path, true)
                        .map_err(|e| std::io::Error::other(e.to_string()))?;
                    self.open
                        .insert(key, BufWriter::with_capacity(64 * 1024, f));
                }
                if let Some(w) = self.open.get_mut(&key) {
                    w.write_all(bytes)?;
                }
            }
            Event::Close { conn, .. } => {
                for d in [Direction::ClientToServer, Direction::ServerToClient] {
                    if let Some(mut w) = self.open.remove(&(conn.id, d)) {
                        w.flush()?;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        for w in self.open.values_mut() {
            w.flush()?;
        }
        Ok(())
    }
}
