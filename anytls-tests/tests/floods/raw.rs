//! A raw AnyTLS client over one rustls connection on blocking std sockets that
//! reads and writes at the same time: a writer (the caller) and a reader
//! thread share the `ClientConnection` behind a mutex and do their socket I/O
//! outside it. The reader decodes every frame the server sends and hands it
//! over a channel, so a client flooding the server never stops the server's
//! answers (which would only measure the socket buffers).

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anytls_io::core::auth::encode_preamble;
use anytls_io::core::frame::encode_frame;
use anytls_io::core::settings::ClientSettings;
use anytls_io::core::{
    Command, Frame, FrameDecoder, FrameLimits, PaddingScheme, PasswordHash, SocksAddr, StreamId,
};
use anytls_io::tls::{self, Verification};
use bytes::BytesMut;

/// Bound of a blocking socket call of the writer.
const IO_LIMIT: Duration = Duration::from_secs(10);
/// The reader's socket read timeout: how often it looks at its stop flag.
const POLL: Duration = Duration::from_millis(100);
/// Plaintext handed to rustls per record.
const RECORD: usize = 16 * 1024;

/// What the reader saw.
#[derive(Debug)]
pub enum Incoming {
    Frame(Frame),
    /// The connection ended: how (close_notify, EOF, error).
    End(String),
}

pub struct RawClient {
    conn: Arc<Mutex<rustls::ClientConnection>>,
    sock: TcpStream,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
    pub frames: mpsc::Receiver<Incoming>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl RawClient {
    /// TCP, then the TLS handshake (pinned to the server's certificate), then
    /// the reader thread starts.
    pub fn connect(addr: SocketAddr, pin: [u8; 32]) -> io::Result<RawClient> {
        let cfg = tls::client_config(&Verification::Pin(pin), &[]).map_err(io::Error::other)?;
        let name = tls::server_name("localhost").map_err(io::Error::other)?;
        let mut conn =
            rustls::ClientConnection::new(Arc::new(cfg), name).map_err(io::Error::other)?;
        let mut sock = TcpStream::connect_timeout(&addr, IO_LIMIT)?;
        sock.set_nodelay(true)?;
        sock.set_read_timeout(Some(IO_LIMIT))?;
        sock.set_write_timeout(Some(IO_LIMIT))?;
        for _ in 0..100 {
            if !conn.is_handshaking() {
                break;
            }
            conn.complete_io(&mut sock)?;
        }
        for _ in 0..100 {
            if !conn.wants_write() {
                break;
            }
            conn.write_tls(&mut sock)?;
        }
        if conn.is_handshaking() {
            return Err(io::Error::other("TLS handshake did not finish"));
        }
        // Socket options belong to the socket, shared by both handles: the
        // reader wakes up every POLL to look at its stop flag.
        sock.set_read_timeout(Some(POLL))?;
        let conn = Arc::new(Mutex::new(conn));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, frames) = mpsc::channel();
        let reader = {
            let (conn, stop, rd) = (conn.clone(), stop.clone(), sock.try_clone()?);
            thread::spawn(move || read_loop(rd, &conn, &stop, &tx))
        };
        Ok(RawClient {
            conn,
            sock,
            stop,
            reader: Some(reader),
            frames,
        })
    }

    /// Sends `data` as TLS records of up to 16 KiB (one record per call for
    /// small data).
    pub fn send(&mut self, data: &[u8]) -> io::Result<()> {
        let mut out = Vec::new();
        for chunk in data.chunks(RECORD) {
            out.clear();
            {
                let mut c = lock(&self.conn);
                c.writer().write_all(chunk)?;
                for _ in 0..1000 {
                    if !c.wants_write() {
                        break;
                    }
                    c.write_tls(&mut out)?;
                }
            }
            self.sock.write_all(&out)?;
        }
        Ok(())
    }

    /// The preamble (default scheme: 30 bytes of padding) as its own record,
    /// then a v2 Settings frame with the default scheme's MD5 (so the server
    /// sends no padding update).
    pub fn handshake(&mut self, password: &str) -> io::Result<()> {
        let mut pre = Vec::new();
        encode_preamble(&PasswordHash::of(password), 30, &mut pre);
        self.send(&pre)?;
        let text = ClientSettings {
            version: 2,
            client: "anytls-rs-floods/0".into(),
            padding_md5: PaddingScheme::default_scheme().md5_hex(),
        }
        .encode()
        .map_err(io::Error::other)?;
        let mut f = Vec::new();
        encode_frame(&mut f, Command::Settings, StreamId::SESSION, &text)
            .map_err(io::Error::other)?;
        self.send(&f)
    }

    /// The next thing the reader saw, waiting at most `limit`.
    pub fn next(&self, limit: Duration) -> Option<Incoming> {
        self.frames.recv_timeout(limit).ok()
    }

    /// Stops the reader and closes the socket.
    pub fn close(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.sock.shutdown(Shutdown::Both);
        if let Some(h) = self.reader.take() {
            let _ = h.join();
        }
    }
}

impl Drop for RawClient {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn read_loop(
    mut sock: TcpStream,
    conn: &Mutex<rustls::ClientConnection>,
    stop: &AtomicBool,
    tx: &mpsc::Sender<Incoming>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut plain = BytesMut::new();
    let mut dec = FrameDecoder::new(FrameLimits::UNLIMITED);
    let started = Instant::now();
    // Bounded by its own age as well as by the stop flag.
    while started.elapsed() < Duration::from_secs(600) {
        let n = match sock.read(&mut buf) {
            Ok(0) => {
                let _ = tx.send(Incoming::End("TCP EOF".into()));
                return;
            }
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if stop.load(Ordering::Acquire) {
                    return;
                }
                continue;
            }
            Err(e) => {
                if !stop.load(Ordering::Acquire) {
                    let _ = tx.send(Incoming::End(format!("read error: {e}")));
                }
                return;
            }
        };
        let mut closed = false;
        {
            let mut c = lock(conn);
            let mut rd = &buf[..n];
            for _ in 0..10_000 {
                if rd.is_empty() {
                    break;
                }
                if let Err(e) = c.read_tls(&mut rd) {
                    let _ = tx.send(Incoming::End(format!("TLS: {e}")));
                    return;
                }
                if let Err(e) = c.process_new_packets() {
                    let _ = tx.send(Incoming::End(format!("TLS: {e}")));
                    return;
                }
                let mut tmp = [0u8; 16 * 1024];
                for _ in 0..10_000 {
                    match c.reader().read(&mut tmp) {
                        Ok(0) => {
                            closed = true;
                            break;
                        }
                        Ok(k) => plain.extend_from_slice(&tmp[..k]),
                        Err(_) => break,
                    }
                }
            }
        }
        for _ in 0..1_000_000 {
            match dec.decode(&mut plain) {
                Ok(Some(f)) => {
                    if tx.send(Incoming::Frame(f)).is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = tx.send(Incoming::End(format!("undecodable frame: {e}")));
                    return;
                }
            }
        }
        if closed {
            let _ = tx.send(Incoming::End("close_notify".into()));
            return;
        }
    }
}

/// SYN + PSH(destination) for stream `id`.
pub fn open_frames(out: &mut Vec<u8>, id: u32, dest: SocketAddr) {
    let mut addr = Vec::new();
    SocksAddr::from(dest).encode(&mut addr).unwrap();
    encode_frame(out, Command::Syn, StreamId(id), &[]).unwrap();
    encode_frame(out, Command::Psh, StreamId(id), &addr).unwrap();
}

/// One empty frame (FIN, SYN, ...).
pub fn empty_frame(out: &mut Vec<u8>, cmd: Command, id: u32) {
    encode_frame(out, cmd, StreamId(id), &[]).unwrap();
}
