//! Bounds on connections: how many are open in total and per client address, how many of an
//! address are still in their TLS handshake, and how long a connection may move no byte.
//!
//! A [`ConnSlot`] (or [`HandshakeSlot`]) is held for as long as the connection (or its
//! handshake) lives; dropping it frees the place. An address listed in `trusted_proxies`
//! counts towards the total only (a reverse proxy carries many clients).

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Open connections and handshakes in progress, per client address.
#[derive(Default, Clone, Copy)]
struct Counts {
    open: usize,
    handshakes: usize,
}

/// Counters for `GET /metrics`.
#[derive(Default)]
pub(crate) struct Gauges {
    pub open: AtomicU64,
    pub refused: AtomicU64,
}

pub(crate) struct ConnTable {
    gauges: Arc<Gauges>,
    max_total: usize,
    max_per_ip: usize,
    max_handshakes_per_ip: usize,
    exempt: Vec<IpAddr>,
    state: Mutex<(usize, HashMap<IpAddr, Counts>)>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    Total,
    PerIp,
    Handshakes,
}

impl Refused {
    pub(crate) fn message(self) -> &'static str {
        match self {
            Refused::Total => {
                "the coordinator has max_connections open: retry later (its administrator may raise max_connections)"
            }
            Refused::PerIp => {
                "too many connections from this address (max_connections_per_ip): close idle connections or retry later"
            }
            Refused::Handshakes => {
                "too many TLS handshakes in progress from this address (max_tls_handshakes_per_ip): retry later"
            }
        }
    }
}

impl ConnTable {
    pub(crate) fn new(
        max_total: usize,
        max_per_ip: usize,
        max_handshakes_per_ip: usize,
        exempt: Vec<IpAddr>,
        gauges: Arc<Gauges>,
    ) -> Arc<Self> {
        Arc::new(Self {
            gauges,
            max_total: max_total.max(1),
            max_per_ip: max_per_ip.max(1),
            max_handshakes_per_ip: max_handshakes_per_ip.max(1),
            exempt,
            state: Mutex::new((0, HashMap::new())),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, HashMap<IpAddr, Counts>)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for a new connection from `ip`, unless a limit is reached.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnSlot, Refused> {
        let mut st = self.lock();
        let exempt = self.exempt.contains(&ip);
        let over = if st.0 >= self.max_total {
            Some(Refused::Total)
        } else {
            st.1.get(&ip)
                .filter(|c| !exempt && c.open >= self.max_per_ip)
                .map(|_| Refused::PerIp)
        };
        if let Some(why) = over {
            self.gauges.refused.fetch_add(1, Ordering::Relaxed);
            return Err(why);
        }
        st.1.entry(ip).or_default().open += 1;
        st.0 += 1;
        self.gauges.open.store(st.0 as u64, Ordering::Relaxed);
        Ok(ConnSlot {
            table: self.clone(),
            ip,
        })
    }

    /// A place for a TLS handshake from `ip` (besides its connection's place).
    pub(crate) fn handshake(self: &Arc<Self>, ip: IpAddr) -> Result<HandshakeSlot, Refused> {
        let mut st = self.lock();
        let exempt = self.exempt.contains(&ip);
        let c = st.1.entry(ip).or_default();
        if !exempt && c.handshakes >= self.max_handshakes_per_ip {
            self.gauges.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Refused::Handshakes);
        }
        c.handshakes += 1;
        Ok(HandshakeSlot {
            table: self.clone(),
            ip,
        })
    }

    /// Open connections in total.
    #[cfg(test)]
    pub(crate) fn open(&self) -> usize {
        self.lock().0
    }

    fn release(&self, ip: IpAddr, conn: bool) {
        let mut st = self.lock();
        if conn {
            st.0 -= 1;
            self.gauges.open.store(st.0 as u64, Ordering::Relaxed);
        }
        if let Some(c) = st.1.get_mut(&ip) {
            if conn {
                c.open -= 1;
            } else {
                c.handshakes -= 1;
            }
            if c.open == 0 && c.handshakes == 0 {
                st.1.remove(&ip);
            }
        }
    }
}

/// One open connection's place in the [`ConnTable`].
pub(crate) struct ConnSlot {
    table: Arc<ConnTable>,
    ip: IpAddr,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.table.release(self.ip, true);
    }
}

/// One TLS handshake in progress.
pub(crate) struct HandshakeSlot {
    table: Arc<ConnTable>,
    ip: IpAddr,
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        self.table.release(self.ip, false);
    }
}

/// A stream that fails with `TimedOut` once no byte moved either way for `idle`, while
/// armed. The server disarms it when the connection became a WebSocket, whose liveness is
/// checked by its own task (`offline_after_secs`).
pub(crate) struct IdleIo<T> {
    inner: T,
    idle: Duration,
    last: Instant,
    timer: Pin<Box<Sleep>>,
    armed: Arc<AtomicBool>,
    _slot: Option<ConnSlot>,
}

impl<T> IdleIo<T> {
    /// `idle` zero: never times out.
    pub(crate) fn new(inner: T, idle: Duration) -> Self {
        let last = Instant::now();
        Self {
            inner,
            idle,
            last,
            timer: Box::pin(tokio::time::sleep_until(last + idle)),
            armed: Arc::new(AtomicBool::new(!idle.is_zero())),
            _slot: None,
        }
    }

    /// Keeps `slot` (the connection's place) for as long as the stream lives.
    pub(crate) fn holding(mut self, slot: ConnSlot) -> Self {
        self._slot = Some(slot);
        self
    }

    /// Clearing the returned flag stops the idle limit.
    pub(crate) fn armed(&self) -> Arc<AtomicBool> {
        self.armed.clone()
    }

    fn touch(&mut self) {
        self.last = Instant::now();
    }

    /// Whether the idle time ran out (registers the waker otherwise).
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.armed.load(Ordering::Relaxed) {
            return false;
        }
        let deadline = self.last + self.idle;
        if self.timer.deadline() != deadline {
            self.timer.as_mut().reset(deadline);
        }
        self.timer.as_mut().poll(cx).is_ready()
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "connection idle for too long")
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                this.touch();
                Poll::Ready(r)
            }
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(r) => {
                this.touch();
                Poll::Ready(r)
            }
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(r) => {
                this.touch();
                Poll::Ready(r)
            }
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(timed_out())),
            other => other,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_address_total_and_handshakes() {
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let proxy: IpAddr = "192.0.2.9".parse().unwrap();
        let gauges = Arc::new(Gauges::default());
        let t = ConnTable::new(5, 2, 1, vec![proxy], gauges.clone());
        let a1 = t.admit(a).unwrap();
        let _a2 = t.admit(a).unwrap();
        assert_eq!(t.admit(a).err(), Some(Refused::PerIp));
        let _b1 = t.admit(b).unwrap();
        let _p1 = t.admit(proxy).unwrap();
        let _p2 = t.admit(proxy).unwrap();
        assert_eq!(t.admit(proxy).err(), Some(Refused::Total));
        drop(a1);
        assert_eq!(t.open(), 4);
        let _a3 = t.admit(a).unwrap();
        let h = t.handshake(b).unwrap();
        assert_eq!(t.handshake(b).err(), Some(Refused::Handshakes));
        drop(h);
        let _h = t.handshake(b).unwrap();
        assert_eq!(gauges.open.load(Ordering::Relaxed), 5);
        assert_eq!(gauges.refused.load(Ordering::Relaxed), 3);
    }

    #[tokio::test]
    async fn idle_streams_time_out_unless_disarmed() {
        use tokio::io::AsyncReadExt;
        let idle = Duration::from_millis(100);
        let (client, server) = tokio::io::duplex(64);
        let mut io = IdleIo::new(server, idle);
        let mut buf = [0u8; 8];
        // Bounded only so a bug hangs no test run.
        let e = tokio::time::timeout(Duration::from_secs(30), io.read(&mut buf))
            .await
            .expect("the idle limit fires")
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        let (client2, server2) = tokio::io::duplex(64);
        let mut io = IdleIo::new(server2, idle);
        io.armed().store(false, Ordering::Relaxed);
        let read = tokio::time::timeout(5 * idle, io.read(&mut buf)).await;
        assert!(read.is_err(), "a disarmed stream waits as long as it takes");
        drop((client, client2));
    }
}
