//! A small SMTP server for tests: it speaks the protocol (RFC 5321: greeting, EHLO/HELO, MAIL,
//! RCPT, DATA with dot-unstuffing, RSET, NOOP, QUIT) over real TCP, so the client under test runs
//! its whole session. It keeps every message it accepts and can be told to refuse recipients or
//! to stall after the data.
use std::sync::{Arc, Mutex};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::TcpListener,
};

/// One message as the server received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub from: String,
    pub to: Vec<String>,
    pub data: Vec<u8>,
}

/// How the server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Accept,
    /// RCPT answered with this reply code (e.g. 550 permanent, 451 temporary).
    RefuseRecipient(u16),
    /// Never answers the end of DATA.
    StallAfterData,
}

#[derive(Clone)]
pub struct SmtpServer {
    pub url: String,
    pub received: Arc<Mutex<Vec<Received>>>,
    pub mode: Arc<Mutex<Mode>>,
    /// When set, the server offers `AUTH PLAIN` and takes mail only after it with this
    /// (user, password).
    pub login: Arc<Mutex<Option<(String, String)>>>,
}

impl SmtpServer {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = Self {
            url: format!("smtp://{addr}"),
            received: Arc::default(),
            mode: Arc::new(Mutex::new(Mode::Accept)),
            login: Arc::default(),
        };
        let state = server.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let state = state.clone();
                tokio::spawn(async move {
                    let _ = state.session(conn).await;
                });
            }
        });
        server
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    pub fn messages(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    async fn session(&self, conn: tokio::net::TcpStream) -> std::io::Result<()> {
        let (read, mut write) = conn.into_split();
        let mut lines = BufReader::new(read);
        write.write_all(b"220 localhost test ESMTP\r\n").await?;
        let (mut from, mut to) = (String::new(), Vec::new());
        let login = self.login.lock().unwrap().clone();
        let mut authenticated = login.is_none();
        let mut line = String::new();
        loop {
            line.clear();
            if lines.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            let command = line.trim_end().to_owned();
            let verb = command.split([' ', ':']).next().unwrap_or("").to_ascii_uppercase();
            let mode = *self.mode.lock().unwrap();
            match verb.as_str() {
                "EHLO" if login.is_some() => {
                    write
                        .write_all(b"250-localhost\r\n250-8BITMIME\r\n250-AUTH PLAIN\r\n250 SMTPUTF8\r\n")
                        .await?
                }
                "EHLO" => {
                    write
                        .write_all(b"250-localhost\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n")
                        .await?
                }
                "AUTH" => {
                    // AUTH PLAIN <base64 of "\0user\0password">
                    use base64::Engine;
                    let given = command
                        .split_whitespace()
                        .nth(2)
                        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                        .map(|raw| {
                            String::from_utf8_lossy(&raw)
                                .split('\0')
                                .map(str::to_owned)
                                .collect::<Vec<_>>()
                        });
                    let ok = match (&login, given.as_deref()) {
                        (Some((user, password)), Some([_, u, p])) => u == user && p == password,
                        _ => false,
                    };
                    if ok {
                        authenticated = true;
                        write.write_all(b"235 2.7.0 authenticated\r\n").await?;
                    } else {
                        write.write_all(b"535 5.7.8 bad credentials\r\n").await?;
                    }
                }
                "MAIL" if !authenticated => write.write_all(b"530 5.7.0 authentication required\r\n").await?,
                "HELO" => write.write_all(b"250 localhost\r\n").await?,
                "MAIL" => {
                    from = address(&command);
                    to.clear();
                    write.write_all(b"250 2.1.0 OK\r\n").await?;
                }
                "RCPT" => match mode {
                    Mode::RefuseRecipient(code) => {
                        write
                            .write_all(format!("{code} 5.1.1 recipient refused by test\r\n").as_bytes())
                            .await?;
                    }
                    _ => {
                        to.push(address(&command));
                        write.write_all(b"250 2.1.5 OK\r\n").await?;
                    }
                },
                "DATA" => {
                    write.write_all(b"354 end data with <CR><LF>.<CR><LF>\r\n").await?;
                    let mut data = Vec::new();
                    loop {
                        let mut l = String::new();
                        if lines.read_line(&mut l).await? == 0 {
                            return Ok(());
                        }
                        if l == ".\r\n" {
                            break;
                        }
                        let l = l.strip_prefix('.').unwrap_or(&l);
                        data.extend_from_slice(l.as_bytes());
                    }
                    if mode == Mode::StallAfterData {
                        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                    }
                    self.received.lock().unwrap().push(Received {
                        from: from.clone(),
                        to: to.clone(),
                        data,
                    });
                    write.write_all(b"250 2.0.0 OK queued\r\n").await?;
                }
                "RSET" => {
                    from.clear();
                    to.clear();
                    write.write_all(b"250 2.0.0 OK\r\n").await?;
                }
                "NOOP" => write.write_all(b"250 2.0.0 OK\r\n").await?,
                "QUIT" => {
                    write.write_all(b"221 2.0.0 bye\r\n").await?;
                    return Ok(());
                }
                _ => write.write_all(b"502 5.5.2 command not implemented\r\n").await?,
            }
        }
    }
}

/// `user@host` of `MAIL FROM:<user@host> …`.
fn address(command: &str) -> String {
    command
        .split_once('<')
        .and_then(|(_, rest)| rest.split_once('>'))
        .map(|(a, _)| a.to_owned())
        .unwrap_or_default()
}
