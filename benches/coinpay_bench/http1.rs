//! A minimal keep-alive HTTP/1.1 client, the load generator's. It shares two cores with the
//! service it measures, so it must cost little per request: request bytes are built before the
//! clock starts and each connection reuses one buffer. (awc or hyper would do the same work with
//! more per-request overhead than this measurement can afford.)

use actix_rt::net::TcpStream;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Res;

pub struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl Conn {
    pub async fn open(addr: &str) -> std::io::Result<Conn> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(Conn {
            s,
            buf: Vec::with_capacity(4096),
        })
    }

    async fn fill(&mut self) -> std::io::Result<()> {
        let mut tmp = [0u8; 8192];
        let n = self.s.read(&mut tmp).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(())
    }

    /// Sends one request and reads its reply. Returns `keep` = false when the server closes.
    pub async fn call(&mut self, req: &[u8]) -> std::io::Result<(Reply, bool)> {
        self.s.write_all(req).await?;
        self.buf.clear();
        let head_end = loop {
            if let Some(p) = find(&self.buf, b"\r\n\r\n") {
                break p + 4;
            }
            self.fill().await?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end])
            .map_err(|_| std::io::Error::other("non-UTF-8 response head"))?;
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other("bad status line"))?;
        let (mut len, mut chunked, mut keep) = (None, false, true);
        for l in lines {
            if let Some((k, v)) = l.split_once(':') {
                let v = v.trim();
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.parse::<usize>().ok();
                } else if k.eq_ignore_ascii_case("transfer-encoding") {
                    chunked = v.eq_ignore_ascii_case("chunked");
                } else if k.eq_ignore_ascii_case("connection") {
                    keep = !v.eq_ignore_ascii_case("close");
                }
            }
        }
        let body = if chunked {
            let mut body = Vec::new();
            let mut pos = head_end;
            loop {
                let line_end = loop {
                    if let Some(p) = find(&self.buf[pos..], b"\r\n") {
                        break pos + p;
                    }
                    self.fill().await?;
                };
                let size_str = std::str::from_utf8(&self.buf[pos..line_end]).unwrap_or("");
                let size =
                    usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16)
                        .map_err(|_| std::io::Error::other("bad chunk size"))?;
                let start = line_end + 2;
                while self.buf.len() < start + size + 2 {
                    self.fill().await?;
                }
                body.extend_from_slice(&self.buf[start..start + size]);
                pos = start + size + 2;
                if size == 0 {
                    break;
                }
            }
            body
        } else {
            let len = len.unwrap_or(0);
            while self.buf.len() < head_end + len {
                self.fill().await?;
            }
            self.buf[head_end..head_end + len].to_vec()
        };
        Ok((Reply { status, body }, keep))
    }
}

pub fn request(method: &str, path: &str, ctype: &str, auth: Option<&str>, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = auth {
        r.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    r.push_str("\r\n");
    let mut v = r.into_bytes();
    v.extend_from_slice(body);
    v
}

pub fn json_request(path: &str, auth: Option<&str>, body: &Value) -> Vec<u8> {
    request(
        "POST",
        path,
        "application/json",
        auth,
        body.to_string().as_bytes(),
    )
}

/// One request outside of any measurement (setup, login).
pub async fn call_once(addr: &str, req: &[u8]) -> Res<Reply> {
    let mut c = Conn::open(addr).await?;
    Ok(c.call(req).await?.0)
}
