//! A small real HTTP/1.1 file server on 127.0.0.1 for archive and mirror tests: serves the
//! files under a directory, logs every request path, and can leave out `Content-Length`
//! (the body then ends when the connection closes). [`FileServer::start_tls`] serves https
//! with pacpool's own rustls server configuration and a certificate the test made.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub struct FileServer {
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    tls: bool,
}

impl FileServer {
    /// Serves `root`; `content_length` false leaves the header out.
    pub fn start(root: &Path, content_length: bool) -> Self {
        Self::start_with(root, content_length, None)
    }

    /// Serves `root` over https with the PEM certificate chain and key.
    pub fn start_tls(root: &Path, cert: &Path, key: &Path) -> Self {
        let config = pacpool::tls::server_config(cert, key).expect("a usable test certificate");
        Self::start_with(root, true, Some(config))
    }

    fn start_with(
        root: &Path,
        content_length: bool,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (root, log2, stop2) = (root.to_owned(), log.clone(), stop.clone());
        let is_tls = tls.is_some();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (root, log, tls) = (root.clone(), log2.clone(), tls.clone());
                std::thread::spawn(move || match tls {
                    None => serve(conn, &root, &log, content_length),
                    Some(config) => {
                        let Ok(session) = rustls::ServerConnection::new(config) else {
                            return;
                        };
                        serve(
                            rustls::StreamOwned::new(session, conn),
                            &root,
                            &log,
                            content_length,
                        )
                    }
                });
            }
        });
        Self {
            addr,
            log,
            stop,
            tls: is_tls,
        }
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Request paths so far, in order.
    pub fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(conn: impl Read + Write, root: &Path, log: &Mutex<Vec<String>>, content_length: bool) {
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split(' ').nth(1).unwrap_or("/").to_owned();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
    }
    // The request head is read whole; nothing else is sent before the answer.
    let mut conn = reader.into_inner();
    log.lock().unwrap().push(path.clone());
    let file: PathBuf = root.join(path.trim_start_matches('/'));
    let ok = !path.contains("..") && file.is_file();
    if !ok {
        let _ = conn
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    }
    let mut f = std::fs::File::open(&file).unwrap();
    let len = f.metadata().unwrap().len();
    let head = if content_length {
        format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n")
    } else {
        "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_owned()
    };
    if conn.write_all(head.as_bytes()).is_err() {
        return;
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf).unwrap_or(0);
        if n == 0 || conn.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = conn.flush();
}
