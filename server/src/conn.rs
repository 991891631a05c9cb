//! One TCP connection between a node and a client or a peer, plain or TLS,
//! as a single stream type: what the listener hands to HTTP or to the
//! multiplexed transport, and what the transport's link dials.
//!
//! On a TLS connection the listener has to read the first decrypted bytes
//! to tell the transport's magic from an HTTP request (a TLS stream cannot
//! be peeked at as a socket can); [`Replay`] gives those bytes back before
//! the rest, so whichever side wins reads the connection from its start.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// A TLS session over TCP, either side's.
pub(crate) type TlsTcp = tokio_rustls::TlsStream<TcpStream>;

/// A connection, plain or TLS.
pub(crate) enum Conn {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS, with any bytes read before the connection was handed on
    /// replayed first. Boxed: a TLS session is ~1 KiB of state.
    Tls(Box<Replay<TlsTcp>>),
}

impl Conn {
    /// The TCP socket under the connection.
    pub(crate) fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(tcp) => tcp,
            Self::Tls(tls) => tls.inner.get_ref().0,
        }
    }

    /// Read and write halves that tasks may own. A plain socket splits
    /// without a lock; a TLS session is one state machine, so its halves
    /// share it through tokio's lock.
    pub(crate) fn into_split(self) -> (ConnRead, ConnWrite) {
        match self {
            Self::Plain(tcp) => {
                let (read, write) = tcp.into_split();
                (ConnRead::Plain(read), ConnWrite::Plain(write))
            }
            Self::Tls(tls) => {
                let (read, write) = tokio::io::split(tls);
                (ConnRead::Tls(read), ConnWrite::Tls(write))
            }
        }
    }
}

/// `inner`, with `prefix` read from it already and given back first.
pub(crate) struct Replay<S> {
    prefix: Vec<u8>,
    /// How much of `prefix` has been given back.
    at: usize,
    inner: S,
}

impl<S> Replay<S> {
    /// `inner`, whose first bytes `prefix` were read already.
    pub(crate) fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self {
            prefix,
            at: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(rest) = this.prefix.get(this.at..).filter(|rest| !rest.is_empty()) {
            let n = rest.len().min(buf.remaining());
            buf.put_slice(rest.get(..n).unwrap_or_default());
            this.at += n;
            if this.at == this.prefix.len() {
                this.prefix = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replay<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Forwards the I/O traits of an enum to whichever variant it holds.
macro_rules! either_io {
    ($ty:ident, $($variant:ident),+) => {
        impl AsyncRead for $ty {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $(Self::$variant(s) => Pin::new(s).poll_read(cx, buf),)+
                }
            }
        }
    };
    (write $ty:ident, $($variant:ident),+) => {
        impl AsyncWrite for $ty {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $(Self::$variant(s) => Pin::new(s).poll_write(cx, buf),)+
                }
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $(Self::$variant(s) => Pin::new(s).poll_flush(cx),)+
                }
            }

            fn poll_shutdown(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $(Self::$variant(s) => Pin::new(s).poll_shutdown(cx),)+
                }
            }

            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $(Self::$variant(s) => Pin::new(s).poll_write_vectored(cx, bufs),)+
                }
            }

            fn is_write_vectored(&self) -> bool {
                match self {
                    $(Self::$variant(s) => s.is_write_vectored(),)+
                }
            }
        }
    };
}

either_io!(Conn, Plain, Tls);
either_io!(write Conn, Plain, Tls);

/// The read half of a [`Conn`].
pub(crate) enum ConnRead {
    /// Of a plain socket.
    Plain(OwnedReadHalf),
    /// Of a TLS session.
    Tls(tokio::io::ReadHalf<Box<Replay<TlsTcp>>>),
}

/// The write half of a [`Conn`].
pub(crate) enum ConnWrite {
    /// Of a plain socket.
    Plain(OwnedWriteHalf),
    /// Of a TLS session.
    Tls(tokio::io::WriteHalf<Box<Replay<TlsTcp>>>),
}

either_io!(ConnRead, Plain, Tls);
either_io!(write ConnWrite, Plain, Tls);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn replay_gives_the_prefix_back_before_the_rest() {
        let (mut near, far) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut near, b" world")
            .await
            .unwrap();
        drop(near);
        let mut replay = Replay::new(b"hello".to_vec(), far);
        // A reader with less room than the prefix gets it in pieces.
        let mut small = [0u8; 3];
        replay.read_exact(&mut small).await.unwrap();
        assert_eq!(&small, b"hel");
        let mut rest = String::new();
        replay.read_to_string(&mut rest).await.unwrap();
        assert_eq!(rest, "lo world");
    }
}
