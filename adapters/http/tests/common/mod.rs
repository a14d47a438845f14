//! A webhook endpoint on a free loopback port per test: the broker that subscribes serves
//! it, the one that publishes POSTs to it (often the same broker).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use polybridge_http::HttpBroker;

/// A free TCP port on 127.0.0.1 (bound and released; the test binds it again at once).
pub fn free_port() -> u16 {
    polybridge_testkit::free_loopback_port().expect("a free loopback port")
}

/// `http://127.0.0.1:<free port>/hooks`.
pub struct Endpoint {
    pub base: String,
}

impl Endpoint {
    pub fn new() -> Endpoint {
        Endpoint {
            base: format!("http://127.0.0.1:{}/hooks", free_port()),
        }
    }

    /// The URL with `options`.
    pub fn url(&self, options: &str) -> String {
        if options.is_empty() {
            self.base.clone()
        } else {
            format!("{}?{options}", self.base)
        }
    }

    pub fn connect(&self, options: &str) -> HttpBroker {
        HttpBroker::connect(&self.url(options).parse().unwrap()).expect("http broker")
    }
}

/// A raw HTTP/1.1 answer: status, headers (lower-case names), body.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A raw HTTP request on its own connection, as any webhook sender (curl, a SaaS) makes it.
pub async fn raw_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> RawResponse {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for (n, v) in headers {
        request.push_str(&format!("{n}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    parse_response(&response)
}

fn parse_response(raw: &[u8]) -> RawResponse {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete HTTP head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    RawResponse {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

/// One request a [`ScriptedServer`] received.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A webhook receiver that answers its requests with scripted statuses (the last one
/// repeats) and reports every request it got.
pub struct ScriptedServer {
    pub addr: std::net::SocketAddr,
    pub received: tokio::sync::mpsc::UnboundedReceiver<Received>,
}

impl ScriptedServer {
    /// `script`: (status, extra headers) per request, in order.
    pub async fn start(script: Vec<(u16, Vec<(&'static str, String)>)>) -> ScriptedServer {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, received) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut n = 0usize;
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let mut reader = BufReader::new(stream);
                // Keep-alive: serve requests on this connection until it closes.
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                        break;
                    }
                    let path = line.split(' ').nth(1).unwrap_or("").to_owned();
                    let mut headers = Vec::new();
                    loop {
                        let mut h = String::new();
                        reader.read_line(&mut h).await.unwrap();
                        let h = h.trim_end();
                        if h.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':') {
                            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
                        }
                    }
                    let len: usize = headers
                        .iter()
                        .find(|(k, _)| k == "content-length")
                        .and_then(|(_, v)| v.parse().ok())
                        .unwrap_or(0);
                    let mut body = vec![0u8; len];
                    reader.read_exact(&mut body).await.unwrap();
                    let _ = tx.send(Received {
                        path,
                        headers,
                        body,
                    });
                    let (status, extra) = script
                        .get(n)
                        .or(script.last())
                        .cloned()
                        .unwrap_or((200, vec![]));
                    n += 1;
                    let mut response =
                        format!("HTTP/1.1 {status} Scripted\r\ncontent-length: 0\r\n");
                    for (k, v) in extra {
                        response.push_str(&format!("{k}: {v}\r\n"));
                    }
                    response.push_str("\r\n");
                    if reader
                        .get_mut()
                        .write_all(response.as_bytes())
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        });
        ScriptedServer { addr, received }
    }

    /// A broker publishing to this server.
    pub fn publisher(&self, options: &str) -> HttpBroker {
        let url = format!("http://{}/in?{options}", self.addr);
        HttpBroker::connect(&url.parse().unwrap()).expect("http broker")
    }
}
