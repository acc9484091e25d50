//! The UDP thread: the listeners and their flows on a runtime of their own.

use std::sync::Arc;

use super::super::spec::PortMap;
use super::super::{Ctx, Level};

/// A UDP listener bound and its mapping.
pub(crate) type UdpBound = (std::net::UdpSocket, PortMap);

/// The UDP listeners and their flows, on a single-threaded runtime of their own. On the shared
/// multi-threaded one, every datagram that arrives while the relaying task runs wakes the I/O
/// driver parked on the other worker (one `epoll_wait` per datagram, measured), taking the
/// core the receiver needs; here the driver is polled only when this thread has nothing to do.
pub(crate) struct UdpThread {
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
    /// Listeners to serve instead of the ones served now (--listen-netns followed).
    relisten: tokio::sync::mpsc::UnboundedSender<Vec<UdpBound>>,
}

impl UdpThread {
    /// Start the thread serving `socks`; returns once they are registered with its runtime.
    pub(crate) async fn start(socks: Vec<UdpBound>, ctx: Arc<Ctx>) -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .on_thread_park(super::pace)
            .build()?;
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let (up, is_up) = tokio::sync::oneshot::channel::<std::io::Result<()>>();
        let (relisten, mut new_socks) = tokio::sync::mpsc::unbounded_channel();
        let thread = std::thread::Builder::new()
            .name("nettool-udp".into())
            .spawn(move || {
                rt.block_on(async move {
                    let mut tasks = tokio::task::JoinSet::new();
                    // Registered here: a socket belongs to the runtime whose driver polls it.
                    let serve = |tasks: &mut tokio::task::JoinSet<()>, socks: Vec<UdpBound>| {
                        for (s, m) in socks {
                            let s = tokio::net::UdpSocket::from_std(s)?;
                            tasks.spawn(super::serve(s, m, ctx.clone()));
                        }
                        Ok::<(), std::io::Error>(())
                    };
                    if let Err(e) = serve(&mut tasks, socks) {
                        let _ = up.send(Err(e));
                        return;
                    }
                    let _ = up.send(Ok(()));
                    loop {
                        tokio::select! {
                            _ = &mut stopped => break,
                            Some(socks) = new_socks.recv() => {
                                // The receiving tasks end, which closes the old listeners
                                // once their flows (tasks of their own, which reply through
                                // them) have gone idle.
                                tasks.abort_all();
                                if let Err(e) = serve(&mut tasks, socks) {
                                    ctx.log(Level::Error, format!("udp: cannot serve the new listeners: {e}"));
                                }
                            }
                        }
                    }
                    tasks.abort_all();
                })
            })?;
        match is_up.await {
            Ok(Ok(())) => Ok(UdpThread {
                stop,
                thread,
                relisten,
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(std::io::Error::other("the UDP thread ended before serving")),
        }
    }

    /// Serve `socks` instead of the listeners served now.
    pub(crate) fn relisten(&self, socks: Vec<UdpBound>) {
        let _ = self.relisten.send(socks);
    }

    /// Stop serving and wait for the thread to end.
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(());
        let thread = self.thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}
