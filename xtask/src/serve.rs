//! A small static file server for the browser tests, the browser bench and the demo: files
//! under a few directories, each mounted at a URL prefix, on `127.0.0.1:<port>` (loopback only).
//! HTTP itself is `tiny_http`'s (request parsing, keep-alive, `HEAD` without a body); what is
//! ours is the mount table and the headers:
//!
//! GET and HEAD only (405 otherwise); `Content-Length` (never chunked) and `Content-Type` on
//! every response, `Access-Control-Allow-Origin: *` (the test page is served from another
//! origin), `Cache-Control: no-store`, 404 for what is not there, 400 for paths with `..`, `\`,
//! NUL or bad `%` escapes (also percent-encoded), 403 for a symbolic link to something outside its
//! mount. A directory serves its `index.html`.
//!
//! Files carry an `ETag` (a hash of path, length and modification time) and honour single
//! `Range: bytes=a-b` / `bytes=a-` / `bytes=-n` requests (206 with `Content-Range`, 416 when
//! unsatisfiable): together with a mount's extra headers (`X-Repo-Commit`) that is what the
//! `hf-hub` client needs, so a mount at `<owner>/<name>/resolve/main` mimics the Hugging Face
//! hub's file layout for `HF_ENDPOINT`. [`http_get`] is the matching client (`ureq`).

use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use tiny_http::{Header, Method, Request, Response, StatusCode};

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
    http: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Serve `mounts` (the longest matching prefix wins) on a free port of 127.0.0.1.
    pub fn start(mounts: Vec<Mount>) -> Result<Self> {
        Self::start_on(0, mounts)
    }

    /// Serve `mounts` on `127.0.0.1:port` (0: a free port).
    pub fn start_on(port: u16, mounts: Vec<Mount>) -> Result<Self> {
        let http = tiny_http::Server::http(("127.0.0.1", port)).map_err(|e| {
            anyhow!("binding 127.0.0.1:{port}: {e} (is another server using it? try --port 0)")
        })?;
        let addr = http.server_addr().to_ip().context("a TCP listener has an IP address")?;
        let http = Arc::new(http);
        let requests = http.clone();
        let mounts = Arc::new(mounts);
        let thread = std::thread::spawn(move || {
            for request in requests.incoming_requests() {
                let mounts = mounts.clone();
                // A client that goes away mid-response is not the server's problem.
                std::thread::spawn(move || {
                    let _ = answer(request, &mounts);
                });
            }
        });
        Ok(Self { addr, http, thread: Some(thread) })
    }

    /// `http://127.0.0.1:<port>` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.http.unblock();
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

/// A response of `status` whose body is the status line itself.
fn status_text(code: u16, extra: Vec<Header>) -> Response<Box<dyn Read + Send>> {
    let status = StatusCode(code);
    let body = format!("{} {}\n", code, status.default_reason_phrase()).into_bytes();
    let len = body.len();
    let mut headers = vec![header("Content-Type", "text/plain; charset=utf-8")];
    headers.extend(extra);
    Response::new(status, headers, Box::new(std::io::Cursor::new(body)), Some(len), None)
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("header names and values are ASCII")
}

/// Answer one request from `mounts`.
fn answer(request: Request, mounts: &[Mount]) -> std::io::Result<()> {
    let response = match request.method() {
        Method::Get | Method::Head => {
            let range = request.headers().iter().find(|h| h.field.equiv("Range")).map(|h| h.value.as_str());
            match resolve(mounts, request.url()) {
                Target::BadPath => status_text(400, Vec::new()),
                Target::NotFound => status_text(404, Vec::new()),
                Target::Outside => status_text(403, Vec::new()),
                Target::File(path, mount) => file_response(&path, &mounts[mount], range)?,
            }
        }
        _ => status_text(405, vec![header("Allow", "GET, HEAD")]),
    };
    // tiny_http sends no body for HEAD, but keeps the length
    request.respond(
        response.with_header(header("Access-Control-Allow-Origin", "*")).with_chunked_threshold(usize::MAX),
    )
}

/// The file at `path` (under `mount`), whole or the part `range` asks for.
fn file_response(
    path: &Path,
    mount: &Mount,
    range: Option<&str>,
) -> std::io::Result<Response<Box<dyn Read + Send>>> {
    let Ok(mut file) = std::fs::File::open(path) else { return Ok(status_text(404, Vec::new())) };
    let meta = file.metadata()?;
    let len = meta.len();
    let mut headers = vec![
        header("Content-Type", content_type(path)),
        header("Cache-Control", "no-store"),
        header("Accept-Ranges", "bytes"),
        header("ETag", &etag(path, &meta)),
    ];
    headers.extend(mount.headers.iter().map(|(k, v)| header(k, v)));
    let (code, start, count) = match parse_range(range, len) {
        Span::Whole => (200, 0, len),
        Span::Part(a, b) => {
            headers.push(header("Content-Range", &format!("bytes {a}-{b}/{len}")));
            (206, a, b - a + 1)
        }
        Span::Unsatisfiable => {
            return Ok(status_text(416, vec![header("Content-Range", &format!("bytes */{len}"))]));
        }
    };
    file.seek(SeekFrom::Start(start))?;
    let count_usize = usize::try_from(count).map_err(std::io::Error::other)?;
    Ok(Response::new(StatusCode(code), headers, Box::new(file.take(count)), Some(count_usize), None))
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::io::Write;
    use std::net::TcpStream;

    /// Send a raw request (its request line, then `Connection: close`, then `rest`) and return
    /// the status line, headers (lower-cased names) and body.
    fn request(server: &Server, raw: &str) -> (String, Vec<(String, String)>, Vec<u8>) {
        let mut stream = TcpStream::connect(server.addr).unwrap();
        let (line, rest) = raw.split_once("\r\n").unwrap();
        stream.write_all(format!("{line}\r\nConnection: close\r\n{rest}").as_bytes()).unwrap();
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
        // tiny_http's accept thread closes the listener once woken: within moments, not at once
        let closed = (0..500).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(10));
            TcpStream::connect(addr).is_err()
        });
        assert!(closed, "still accepting 5 s after the drop");
    }
}
