//! A small static HTTP server for the browser tests, the browser bench and the demo: files under
//! a few directories, each mounted at a URL prefix, on `127.0.0.1:<free port>` in a background
//! thread.
//!
//! GET and HEAD only (405 otherwise); `Content-Length` and `Content-Type` on every response,
//! `Access-Control-Allow-Origin: *` (the test page is served from another origin), 404 for what
//! is not there, 400 for paths with `..`, `\`, NUL or bad `%` escapes (also percent-encoded), 403
//! for a symbolic link to something outside its mount. A directory serves its
//! `index.html`. One request per connection (`Connection: close`).
//!
//! Files carry an `ETag` (a hash of path, length and modification time) and honour single
//! `Range: bytes=a-b` / `bytes=a-` / `bytes=-n` requests (206 with `Content-Range`, 416 when
//! unsatisfiable): together with a mount's extra headers (`X-Repo-Commit`) that is what the
//! `hf-hub` client needs, so a mount at `<owner>/<name>/resolve/main` mimics the Hugging Face
//! hub's file layout for `HF_ENDPOINT`. [`http_get`] is the matching client (`ureq`).
//!
//! The protocol is ours (one request per connection is all the tests and the demo need);
//! `tiny_http` 0.12 was tried and dropped: its connection pool (four threads, grown on demand)
//! can queue a new connection behind keep-alive ones and leave it unread until one closes —
//! Chromium's page load stalled for minutes in the e2e test.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};

/// A directory served under a URL prefix.
#[derive(Clone, Debug)]
pub struct Mount {
    /// `/`-separated path prefix without leading or trailing `/` (empty: the whole site).
    pub prefix: String,
    pub dir: PathBuf,
    /// Headers added to every file served from this mount.
    pub headers: Vec<(String, String)>,
}

impl Mount {
    pub fn new(prefix: &str, dir: impl Into<PathBuf>) -> Self {
        Self { prefix: prefix.trim_matches('/').to_string(), dir: dir.into(), headers: Vec::new() }
    }

    /// Add `name: value` to the responses of this mount's files.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

/// A running server; dropping it stops it.
pub struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Serve `mounts` (the longest matching prefix wins) on a free port of 127.0.0.1.
    pub fn start(mounts: Vec<Mount>) -> Result<Self> {
        Self::start_on(0, mounts)
    }

    /// Serve `mounts` on `127.0.0.1:port` (0: a free port).
    pub fn start_on(port: u16, mounts: Vec<Mount>) -> Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", port)).with_context(|| {
            format!("binding 127.0.0.1:{port} (is another server using it? try --port 0)")
        })?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let mounts = Arc::new(mounts);
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let mounts = mounts.clone();
                std::thread::spawn(move || {
                    // A client that goes away mid-response is not the server's problem.
                    let _ = handle(stream, &mounts);
                });
            }
        });
        Ok(Self { addr, stop, thread: Some(thread) })
    }

    /// `http://127.0.0.1:<port>` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `GET url`: the status code (errors included) and the body.
pub fn http_get(url: &str) -> Result<(u16, Vec<u8>)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let mut response = agent.get(url).call().with_context(|| format!("GET {url}"))?;
    let body = response
        .body_mut()
        .with_config()
        .limit(u64::MAX)
        .read_to_vec()
        .with_context(|| format!("reading the answer to GET {url}"))?;
    Ok((response.status().as_u16(), body))
}

/// What a request resolves to.
#[derive(Debug, PartialEq)]
enum Target {
    /// A file, and the index of the mount it is under.
    File(PathBuf, usize),
    BadPath,
    NotFound,
    /// A link under a mount to something outside it.
    Outside,
}

/// Decode `%XX` escapes; `None` for a malformed escape or a result that is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let well_formed = s
        .split('%')
        .skip(1)
        .all(|rest| rest.len() >= 2 && rest.as_bytes()[..2].iter().all(u8::is_ascii_hexdigit));
    let decoded = percent_encoding::percent_decode_str(s).decode_utf8().ok()?;
    well_formed.then(|| decoded.into_owned())
}

/// Map a request target (`/a/b?query`) to a file under one of `mounts`.
fn resolve(mounts: &[Mount], target: &str) -> Target {
    let path = target.split(['?', '#']).next().unwrap_or_default();
    let Some(path) = percent_decode(path) else { return Target::BadPath };
    if !path.starts_with('/') || path.contains(['\\', '\0']) {
        return Target::BadPath;
    }
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty() && *s != ".").collect();
    if segments.contains(&"..") {
        return Target::BadPath;
    }
    let mount = mounts
        .iter()
        .enumerate()
        .filter(|(_, m)| {
            let prefix: Vec<&str> = m.prefix.split('/').filter(|s| !s.is_empty()).collect();
            segments.starts_with(&prefix)
        })
        .max_by_key(|(_, m)| m.prefix.len());
    let Some((index, mount)) = mount else { return Target::NotFound };
    let skip = mount.prefix.split('/').filter(|s| !s.is_empty()).count();
    let mut file = mount.dir.clone();
    file.extend(&segments[skip..]);
    if file.is_dir() {
        file.push("index.html");
    }
    if !file.is_file() {
        return Target::NotFound;
    }
    // Symbolic links may point anywhere: only what lies under the mount is served.
    match (file.canonicalize(), mount.dir.canonicalize()) {
        (Ok(real), Ok(root)) if real.starts_with(&root) => Target::File(file, index),
        _ => Target::Outside,
    }
}

/// A `Range` header resolved against a file of `len` bytes.
#[derive(Debug, PartialEq)]
enum Span {
    Whole,
    /// Inclusive byte range.
    Part(u64, u64),
    Unsatisfiable,
}

/// Parse a single-range `bytes=` header value (anything else is served whole, as RFC 9110 allows).
fn parse_range(value: Option<&str>, len: u64) -> Span {
    let Some(spec) = value.and_then(|v| v.trim().strip_prefix("bytes=")) else { return Span::Whole };
    if spec.contains(',') {
        return Span::Whole;
    }
    let Some((a, b)) = spec.split_once('-') else { return Span::Whole };
    let (a, b) = (a.trim(), b.trim());
    let span = match (a.parse::<u64>().ok(), b.parse::<u64>().ok()) {
        (Some(start), None) if b.is_empty() => (start, len.saturating_sub(1)),
        (Some(start), Some(end)) if start <= end => (start, end.min(len.saturating_sub(1))),
        (None, Some(n)) if a.is_empty() && n > 0 => (len.saturating_sub(n), len.saturating_sub(1)),
        _ => return Span::Whole,
    };
    if span.0 >= len { Span::Unsatisfiable } else { Span::Part(span.0, span.1) }
}

/// A validator for the file's current contents: a hash of its path, length and mtime.
fn etag(path: &Path, meta: &std::fs::Metadata) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    path.hash(&mut h);
    meta.len().hash(&mut h);
    meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).hash(&mut h);
    format!("\"{:016x}\"", h.finish())
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or_default() {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "wasm" => "application/wasm",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "txt" | "jinja" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn respond(
    stream: &mut TcpStream,
    status: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {status}\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("Access-Control-Allow-Origin: *\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)
}

fn respond_text(
    stream: &mut TcpStream,
    status: &str,
    extra: &[(&str, String)],
    head_only: bool,
) -> std::io::Result<()> {
    let body = format!("{status}\n");
    let mut headers = vec![
        ("Content-Type", "text/plain; charset=utf-8".to_string()),
        ("Content-Length", body.len().to_string()),
    ];
    headers.extend(extra.iter().cloned());
    respond(stream, status, &headers, if head_only { b"" } else { body.as_bytes() })
}

fn handle(mut stream: TcpStream, mounts: &[Mount]) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.by_ref().take(8192).read_line(&mut request_line)?;
    // Read the headers (bounded), keeping `Range`.
    let mut header_bytes = 0;
    let mut range = None;
    loop {
        let mut line = String::new();
        let n = reader.by_ref().take(8192).read_line(&mut line)?;
        header_bytes += n;
        if n == 0 || line == "\r\n" || line == "\n" || header_bytes > 64 * 1024 {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.trim().eq_ignore_ascii_case("range")
        {
            range = Some(value.trim().to_string());
        }
    }
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        respond_text(&mut stream, "405 Method Not Allowed", &[("Allow", "GET, HEAD".into())], false)?;
    } else {
        match resolve(mounts, target) {
            Target::BadPath => respond_text(&mut stream, "400 Bad Request", &[], head_only)?,
            Target::NotFound => respond_text(&mut stream, "404 Not Found", &[], head_only)?,
            Target::Outside => respond_text(&mut stream, "403 Forbidden", &[], head_only)?,
            Target::File(path, mount) => match std::fs::File::open(&path) {
                Ok(mut file) => {
                    let meta = file.metadata()?;
                    let len = meta.len();
                    let mut headers = vec![
                        ("Content-Type", content_type(&path).to_string()),
                        ("Cache-Control", "no-store".to_string()),
                        ("Accept-Ranges", "bytes".to_string()),
                        ("ETag", etag(&path, &meta)),
                    ];
                    headers.extend(mounts[mount].headers.iter().map(|(k, v)| (k.as_str(), v.clone())));
                    let (status, start, count) = match parse_range(range.as_deref(), len) {
                        Span::Whole => ("200 OK", 0, len),
                        Span::Part(a, b) => {
                            headers.push(("Content-Range", format!("bytes {a}-{b}/{len}")));
                            ("206 Partial Content", a, b - a + 1)
                        }
                        Span::Unsatisfiable => {
                            let extra = [("Content-Range", format!("bytes */{len}"))];
                            respond_text(&mut stream, "416 Range Not Satisfiable", &extra, head_only)?;
                            stream.flush()?;
                            return stream.shutdown(Shutdown::Write);
                        }
                    };
                    headers.push(("Content-Length", count.to_string()));
                    respond(&mut stream, status, &headers, b"")?;
                    if !head_only {
                        file.seek(SeekFrom::Start(start))?;
                        std::io::copy(&mut file.take(count), &mut stream)?;
                    }
                }
                Err(_) => respond_text(&mut stream, "404 Not Found", &[], head_only)?,
            },
        }
    }
    stream.flush()?;
    stream.shutdown(Shutdown::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Send a raw request and return the status line, headers (lower-cased names) and body.
    fn request(server: &Server, raw: &str) -> (String, Vec<(String, String)>, Vec<u8>) {
        let mut stream = TcpStream::connect(server.addr).unwrap();
        stream.write_all(raw.as_bytes()).unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).unwrap();
        let split = response.windows(4).position(|w| w == b"\r\n\r\n").expect("a header block");
        let head = String::from_utf8(response[..split].to_vec()).unwrap();
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap().to_string();
        let headers = lines
            .map(|l| {
                let (k, v) = l.split_once(": ").unwrap();
                (k.to_ascii_lowercase(), v.to_string())
            })
            .collect();
        (status, headers, response[split + 4..].to_vec())
    }

    fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn get(server: &Server, path: &str) -> (String, Vec<(String, String)>, Vec<u8>) {
        request(server, &format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"))
    }

    fn site() -> (tempfile::TempDir, tempfile::TempDir, Server) {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::write(a.path().join("shard-00000.bin"), vec![7u8; 100_000]).unwrap();
        std::fs::create_dir(a.path().join("sub")).unwrap();
        std::fs::write(a.path().join("sub/x y.json"), b"{}").unwrap();
        std::fs::write(b.path().join("index.html"), b"<p>hi</p>").unwrap();
        std::fs::write(b.path().join("secret.txt"), b"no").unwrap();
        let server =
            Server::start(vec![Mount::new("/model/tiny/", a.path()), Mount::new("", b.path())]).unwrap();
        (a, b, server)
    }

    #[test]
    fn serves_files_with_length_type_and_cors() {
        let (_a, _b, server) = site();
        let (status, headers, body) = get(&server, "/model/tiny/shard-00000.bin");
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(body, vec![7u8; 100_000]);
        assert_eq!(header(&headers, "content-length"), Some("100000"));
        assert_eq!(header(&headers, "content-type"), Some("application/octet-stream"));
        assert_eq!(header(&headers, "access-control-allow-origin"), Some("*"));

        let (status, headers, body) = get(&server, "/model/tiny/sub/x%20y.json?v=1");
        assert_eq!((status.as_str(), body.as_slice()), ("HTTP/1.1 200 OK", b"{}".as_slice()));
        assert_eq!(header(&headers, "content-type"), Some("application/json"));
        // The root mount, with its index.html.
        assert_eq!(get(&server, "/").2, b"<p>hi</p>");
        assert_eq!(get(&server, "/secret.txt").2, b"no");
    }

    #[test]
    fn head_has_the_length_but_no_body() {
        let (_a, _b, server) = site();
        let (status, headers, body) = request(&server, "HEAD /model/tiny/shard-00000.bin HTTP/1.1\r\n\r\n");
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(header(&headers, "content-length"), Some("100000"));
        assert!(body.is_empty());
    }

    #[test]
    fn missing_files_traversal_and_other_methods_are_refused() {
        let (_a, _b, server) = site();
        let (status, headers, _) = get(&server, "/model/tiny/shard-00001.bin");
        assert_eq!(status, "HTTP/1.1 404 Not Found");
        assert_eq!(header(&headers, "access-control-allow-origin"), Some("*"));
        assert_eq!(get(&server, "/model/other/manifest.json").0, "HTTP/1.1 404 Not Found");
        for bad in ["/model/tiny/../secret.txt", "/model/tiny/%2e%2e/secret.txt", "/a\\b", "/x%zz", "/x%00"] {
            assert_eq!(get(&server, bad).0, "HTTP/1.1 400 Bad Request", "{bad}");
        }
        // A link out of its mount is refused; one within it is served.
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(_b.path().join("secret.txt"), _a.path().join("leak.txt")).unwrap();
            std::os::unix::fs::symlink(_a.path().join("sub"), _a.path().join("inner")).unwrap();
            assert_eq!(get(&server, "/model/tiny/leak.txt").0, "HTTP/1.1 403 Forbidden");
            assert_eq!(get(&server, "/model/tiny/inner/x%20y.json").0, "HTTP/1.1 200 OK");
        }
        let (status, headers, _) = request(&server, "POST /secret.txt HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
        assert_eq!(header(&headers, "allow"), Some("GET, HEAD"));
    }

    #[test]
    fn ranges_and_validators() {
        let (_a, _b, server) = site();
        let path = "/model/tiny/shard-00000.bin";
        let ranged = |range: &str| {
            request(&server, &format!("GET {path} HTTP/1.1\r\nHost: x\r\nRange: {range}\r\n\r\n"))
        };
        let (status, headers, body) = ranged("bytes=0-0");
        assert_eq!(status, "HTTP/1.1 206 Partial Content");
        assert_eq!(header(&headers, "content-range"), Some("bytes 0-0/100000"));
        assert_eq!((body.len(), header(&headers, "content-length")), (1, Some("1")));
        let (status, headers, body) = ranged("bytes=99990-");
        assert_eq!(status, "HTTP/1.1 206 Partial Content");
        assert_eq!(header(&headers, "content-range"), Some("bytes 99990-99999/100000"));
        assert_eq!(body.len(), 10);
        assert_eq!(ranged("bytes=-4").2.len(), 4);
        let (status, headers, _) = ranged("bytes=100000-");
        assert_eq!(status, "HTTP/1.1 416 Range Not Satisfiable");
        assert_eq!(header(&headers, "content-range"), Some("bytes */100000"));
        // Multi-range and malformed headers are answered with the whole file.
        assert_eq!(ranged("bytes=0-1,5-6").2.len(), 100_000);
        assert_eq!(ranged("lines=1-2").2.len(), 100_000);
        let (_, h1, _) = get(&server, path);
        let (_, h2, _) = get(&server, "/model/tiny/sub/x%20y.json");
        let (e1, e2) = (header(&h1, "etag").unwrap(), header(&h2, "etag").unwrap());
        assert!(e1.starts_with('"') && e1 != e2);
        assert_eq!(header(&get(&server, path).1, "etag"), Some(e1));
    }

    #[test]
    fn mount_headers_are_added_to_its_files_only() {
        let a = tempfile::tempdir().unwrap();
        std::fs::write(a.path().join("config.json"), b"{}").unwrap();
        let server = Server::start(vec![
            Mount::new("o/m/resolve/main", a.path()).with_header("X-Repo-Commit", "abc"),
            Mount::new("plain", a.path()),
        ])
        .unwrap();
        assert_eq!(header(&get(&server, "/o/m/resolve/main/config.json").1, "x-repo-commit"), Some("abc"));
        assert_eq!(header(&get(&server, "/plain/config.json").1, "x-repo-commit"), None);
    }

    #[test]
    fn dropping_the_server_stops_it() {
        let (_a, _b, server) = site();
        let addr = server.addr;
        drop(server);
        assert!(TcpStream::connect(addr).is_err());
    }
}
