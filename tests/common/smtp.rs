//! A real SMTP server on loopback (mailin-embedded) that keeps what it
//! receives, for the email tests.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mailin_embedded::response::{NO_MAILBOX, OK};
use mailin_embedded::{Handler, Response, Server, SslConfig};

/// One message as the server received it.
#[derive(Debug, Clone)]
pub struct Received {
    /// RCPT TO addresses.
    pub to: Vec<String>,
    /// The raw message (headers and body).
    pub raw: Vec<u8>,
}

impl Received {
    /// The parsed message.
    pub fn parsed(&self) -> mail_parser::Message<'_> {
        mail_parser::MessageParser::default()
            .parse(&self.raw)
            .expect("a parsable message")
    }

    /// The Message-ID header (without angle brackets).
    pub fn message_id(&self) -> String {
        self.parsed().message_id().unwrap_or_default().to_string()
    }
}

#[derive(Clone)]
struct Collector {
    inbox: Arc<Mutex<Vec<Received>>>,
    reject: Arc<AtomicBool>,
    to: Vec<String>,
    data: Vec<u8>,
}

impl Handler for Collector {
    fn rcpt(&mut self, _to: &str) -> Response {
        if self.reject.load(Ordering::SeqCst) {
            NO_MAILBOX
        } else {
            OK
        }
    }

    fn data_start(&mut self, _domain: &str, _from: &str, _is8bit: bool, to: &[String]) -> Response {
        self.to = to.to_vec();
        self.data.clear();
        OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.data.extend_from_slice(buf);
        Ok(())
    }

    fn data_end(&mut self) -> Response {
        self.inbox.lock().unwrap().push(Received {
            to: self.to.clone(),
            raw: std::mem::take(&mut self.data),
        });
        OK
    }
}

/// A running SMTP server (it lives until the test process ends).
pub struct SmtpSink {
    /// Where it listens.
    pub addr: SocketAddr,
    inbox: Arc<Mutex<Vec<Received>>>,
    reject: Arc<AtomicBool>,
}

impl SmtpSink {
    /// Starts a server on a random loopback port.
    pub fn start() -> SmtpSink {
        SmtpSink::on(TcpListener::bind("127.0.0.1:0").unwrap())
    }

    /// Starts a server on `listener`.
    pub fn on(listener: TcpListener) -> SmtpSink {
        let addr = listener.local_addr().unwrap();
        let inbox = Arc::new(Mutex::new(Vec::new()));
        let reject = Arc::new(AtomicBool::new(false));
        let handler = Collector {
            inbox: inbox.clone(),
            reject: reject.clone(),
            to: Vec::new(),
            data: Vec::new(),
        };
        let mut server = Server::new(handler);
        server
            .with_name("sink.test")
            .with_ssl(SslConfig::None)
            .unwrap()
            .with_tcp_listener(listener);
        std::thread::spawn(move || {
            // The server runs until the test process ends.
            let _ = server.serve();
        });
        SmtpSink {
            addr,
            inbox,
            reject,
        }
    }

    /// Answer every RCPT with 550 from now on (or stop doing so).
    pub fn reject_all(&self, on: bool) {
        self.reject.store(on, Ordering::SeqCst);
    }

    /// What arrived so far.
    pub fn received(&self) -> Vec<Received> {
        self.inbox.lock().unwrap().clone()
    }

    /// Waits until at least `n` messages arrived.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {n} messages arrived",
                got.len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The `[email.smtp]` table for a server on `addr` without TLS.
pub fn smtp_config(addr: SocketAddr) -> String {
    format!(
        "[email.smtp]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\ntimeout_seconds = 5\n",
        addr.port()
    )
}

/// A hand-written SMTP server on loopback that asks for authentication on
/// a plain connection (mailin-embedded offers AUTH only over TLS) and
/// refuses the credentials (535, as when an app password is revoked) until
/// told to accept them. It accepts every message once they are.
pub struct AuthSink {
    /// Where it listens.
    pub addr: SocketAddr,
    accept: Arc<AtomicBool>,
    inbox: Arc<Mutex<Vec<Vec<u8>>>>,
    refusals: Arc<Mutex<usize>>,
}

impl AuthSink {
    /// Starts a server that refuses the credentials.
    pub fn start() -> AuthSink {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let sink = AuthSink {
            addr: listener.local_addr().unwrap(),
            accept: Arc::new(AtomicBool::new(false)),
            inbox: Arc::new(Mutex::new(Vec::new())),
            refusals: Arc::new(Mutex::new(0)),
        };
        let (accept, inbox, refusals) = (
            sink.accept.clone(),
            sink.inbox.clone(),
            sink.refusals.clone(),
        );
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (accept, inbox, refusals) = (accept.clone(), inbox.clone(), refusals.clone());
                std::thread::spawn(move || {
                    let _ = auth_session(stream, &accept, &inbox, &refusals);
                });
            }
        });
        sink
    }

    /// Accept the credentials from now on.
    pub fn accept(&self) {
        self.accept.store(true, Ordering::SeqCst);
    }

    /// How many AUTH commands it refused.
    pub fn refusals(&self) -> usize {
        *self.refusals.lock().unwrap()
    }

    /// The messages received (raw).
    pub fn received(&self) -> Vec<Vec<u8>> {
        self.inbox.lock().unwrap().clone()
    }

    /// The `[email.smtp]` table for it, with a user name and the password
    /// in a file under `dir`.
    pub fn config(&self, dir: &std::path::Path) -> String {
        let password = dir.join("smtp-password");
        std::fs::write(&password, "revoked-app-password").unwrap();
        format!(
            "{}username = \"demo@example.invalid\"\npassword = {{ file = {:?} }}\n",
            smtp_config(self.addr),
            password.display().to_string()
        )
    }
}

/// One SMTP session (RFC 5321 with AUTH, RFC 4954), line by line.
fn auth_session(
    stream: std::net::TcpStream,
    accept: &AtomicBool,
    inbox: &Mutex<Vec<Vec<u8>>>,
    refusals: &Mutex<usize>,
) -> std::io::Result<()> {
    use std::io::{BufRead, BufReader, Write};
    let mut out = stream.try_clone()?;
    let mut lines = BufReader::new(stream);
    out.write_all(b"220 auth.test ESMTP\r\n")?;
    let mut authed = false;
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let command = line.trim_end().to_ascii_uppercase();
        let reply: &[u8] = if command.starts_with("EHLO") {
            b"250-auth.test\r\n250 AUTH PLAIN LOGIN\r\n"
        } else if command.starts_with("AUTH") {
            if accept.load(Ordering::SeqCst) {
                authed = true;
                b"235 2.7.0 Authentication successful\r\n"
            } else {
                *refusals.lock().unwrap() += 1;
                b"535 5.7.8 Username and Password not accepted\r\n"
            }
        } else if command.starts_with("MAIL") && !authed {
            b"530 5.7.0 Authentication required\r\n"
        } else if command.starts_with("MAIL") || command.starts_with("RCPT") {
            b"250 2.1.0 OK\r\n"
        } else if command == "DATA" {
            out.write_all(b"354 Go ahead\r\n")?;
            let mut message = Vec::new();
            loop {
                line.clear();
                if lines.read_line(&mut line)? == 0 {
                    return Ok(());
                }
                if line == ".\r\n" {
                    break;
                }
                message.extend_from_slice(line.as_bytes());
            }
            inbox.lock().unwrap().push(message);
            b"250 2.0.0 OK queued\r\n"
        } else if command == "QUIT" {
            out.write_all(b"221 2.0.0 Bye\r\n")?;
            return Ok(());
        } else if command == "RSET" || command == "NOOP" {
            b"250 2.0.0 OK\r\n"
        } else {
            b"500 5.5.2 Unknown command\r\n"
        };
        out.write_all(reply)?;
    }
}
