//! A small static HTTP server for the browser tests, the browser bench and the demo: files under
//! a few directories, each mounted at a URL prefix, on `127.0.0.1:<port>`, served by hyper on a
//! tokio runtime in a background thread. [`http_get`] is the matching client (`ureq`).
//!
//! The protocol is the libraries': hyper speaks HTTP/1.1 with keep-alive, each connection its own
//! task, so a browser's idle connections never hold back a new one (`tiny_http`'s four-thread
//! pool did, and stalled Chromium's page load for minutes); `http-serve` answers GET and HEAD on a
//! file with single and multiple `Range`s (206, 416) and conditional requests (`If-None-Match`,
//! `If-Modified-Since`, `If-Range`) against a strong `ETag` (inode, length, mtime) and
//! `Last-Modified`.
//!
//! What is ours is the mount table and the headers. A path maps to the mount with the longest
//! matching prefix, and a directory to its `index.html`; 400 for paths with `..`, `\`, NUL or bad
//! `%` escapes (also percent-encoded), 403 for a symbolic link to something outside its mount,
//! 404 for what is not there, 405 for methods other than GET and HEAD. Every response carries
//! `Access-Control-Allow-Origin: *` (the test page is served from another origin); files carry
//! `Content-Type` by extension, `Cache-Control: no-store` and their mount's extra headers — with
//! `X-Repo-Commit` that is what the `hf-hub` client needs, so a mount at
//! `<owner>/<name>/resolve/main` mimics the Hugging Face hub's file layout for `HF_ENDPOINT`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of every response: a file's chunks, or a short text.
type Body = http_serve::Body<bytes::Bytes, BoxError>;
type FileEntity = http_serve::ChunkedReadFile<bytes::Bytes, BoxError>;

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
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Serve `mounts` (the longest matching prefix wins) on a free port of 127.0.0.1.
    pub fn start(mounts: Vec<Mount>) -> Result<Self> {
        Self::start_on(0, mounts)
    }

    /// Serve `mounts` on `127.0.0.1:port` (0: a free port).
    pub fn start_on(port: u16, mounts: Vec<Mount>) -> Result<Self> {
        let site = Arc::new(Site::new(mounts)?);
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).with_context(|| {
            format!("binding 127.0.0.1:{port} (is another server using it? try --port 0)")
        })?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        // Files are read in `block_in_place`, which needs the multi-threaded runtime.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("xtask-serve")
            .enable_io()
            .enable_time()
            .build()
            .context("starting the server's runtime")?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            runtime.spawn(accept(listener, site));
            // Either a stop or a dropped sender ends the server.
            let _ = runtime.block_on(stopped);
            runtime.shutdown_timeout(Duration::from_secs(2));
        });
        Ok(Self { addr, stop: Some(stop), thread: Some(thread) })
    }

    /// `http://127.0.0.1:<port>` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The mounts, each with its extra headers parsed once.
struct Site {
    mounts: Vec<Mount>,
    headers: Vec<HeaderMap>,
}

impl Site {
    /// Typed error for an extra header HTTP cannot carry, so that serving a file cannot fail on it.
    fn new(mounts: Vec<Mount>) -> Result<Self> {
        let mut headers = Vec::with_capacity(mounts.len());
        for m in &mounts {
            let mut map = HeaderMap::new();
            for (name, value) in &m.headers {
                map.insert(
                    HeaderName::try_from(name.as_str()).with_context(|| format!("header name {name:?}"))?,
                    HeaderValue::try_from(value.as_str())
                        .with_context(|| format!("header value {value:?}"))?,
                );
            }
            headers.push(map);
        }
        Ok(Self { mounts, headers })
    }
}

/// Accept connections until the runtime shuts down, each served by hyper in its own task.
async fn accept(listener: std::net::TcpListener, site: Arc<Site>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => return eprintln!("xtask serve: {e}"),
    };
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // out of file descriptors, or a connection reset before it was accepted: retry
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let service = Service(site.clone());
        tokio::spawn(async move {
            // A client that goes away mid-response is not the server's problem.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The site as a hyper service: each request answered where it arrives.
struct Service(Arc<Site>);

impl<B> hyper::service::Service<Request<B>> for Service {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<Body>, Infallible>>;

    fn call(&self, request: Request<B>) -> Self::Future {
        // resolving the path and opening the file touch the disk
        std::future::ready(Ok(tokio::task::block_in_place(|| respond(&self.0, &request))))
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

/// The answer to `request`: a file through `http-serve`, or a status with a one-line text body.
fn respond<B>(site: &Site, request: &Request<B>) -> Response<Body> {
    let mut response = if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut r = status(StatusCode::METHOD_NOT_ALLOWED);
        r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        r
    } else {
        let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
        match resolve(&site.mounts, target) {
            Target::BadPath => status(StatusCode::BAD_REQUEST),
            Target::NotFound => status(StatusCode::NOT_FOUND),
            Target::Outside => status(StatusCode::FORBIDDEN),
            Target::File(path, mount) => match file(&path) {
                Ok(entity) => {
                    let mut r = http_serve::serve(entity, request);
                    let headers = r.headers_mut();
                    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                    headers.extend(site.headers[mount].clone());
                    r
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => status(StatusCode::NOT_FOUND),
                Err(_) => status(StatusCode::INTERNAL_SERVER_ERROR),
            },
        }
    };
    response.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    response
}

/// `path` as an `http-serve` entity, with its content type. A file modified before 1970 is an
/// error here (its ETag is built from the time since then, which `http-serve` would not survive).
fn file(path: &Path) -> std::io::Result<FileEntity> {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type(path)));
    let file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    if meta.modified()?.duration_since(std::time::UNIX_EPOCH).is_err() {
        return Err(std::io::Error::other(format!("{} was modified before 1970", path.display())));
    }
    FileEntity::new_with_metadata(file, &meta, headers)
}

/// A status answered with its own name as a line of text.
fn status(code: StatusCode) -> Response<Body> {
    let mut r = Response::new(Body::from(format!("{code}\n")));
    *r.status_mut() = code;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
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

#[cfg(test)]
mod tests {
    use super::*;

    use std::io::{Read, Write};
    use std::net::TcpStream;

    type Answer = (String, Vec<(String, String)>, Vec<u8>);

    /// Send a raw request (its request line, then `Connection: close` and the rest) and return
    /// the status line, headers (lower-cased names) and body.
    fn request(server: &Server, raw: &str) -> Answer {
        let mut stream = TcpStream::connect(server.addr).unwrap();
        let (line, rest) = raw.split_once("\r\n").unwrap();
        stream.write_all(format!("{line}\r\nConnection: close\r\n{rest}").as_bytes()).unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).unwrap();
        parse(&response)
    }

    fn parse(response: &[u8]) -> Answer {
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

    fn get(server: &Server, path: &str) -> Answer {
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
        // a file whose time the ETag cannot express is a server error, not a dropped connection
        let old = std::fs::File::create(_b.path().join("old.txt")).unwrap();
        old.set_modified(std::time::UNIX_EPOCH - Duration::from_secs(86_400)).unwrap();
        assert_eq!(get(&server, "/old.txt").0, "HTTP/1.1 500 Internal Server Error");
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
        // several ranges come as multipart/byteranges; a unit other than bytes gets the whole file
        let (status, headers, body) = ranged("bytes=0-1,5-6");
        assert_eq!(status, "HTTP/1.1 206 Partial Content");
        assert!(header(&headers, "content-type").is_some_and(|t| t.starts_with("multipart/byteranges")));
        assert!(body.len() < 1000, "{}", body.len());
        assert_eq!(ranged("lines=1-2").2.len(), 100_000);
        // a strong validator per file, stable while the file is, honoured by conditional requests
        let (_, h1, _) = get(&server, path);
        let (_, h2, _) = get(&server, "/model/tiny/sub/x%20y.json");
        let (e1, e2) = (header(&h1, "etag").unwrap(), header(&h2, "etag").unwrap());
        assert!(e1.starts_with('"') && e1 != e2);
        assert_eq!(header(&get(&server, path).1, "etag"), Some(e1));
        let conditional = |name: &str, tag: &str| {
            request(&server, &format!("GET {path} HTTP/1.1\r\nHost: x\r\n{name}: {tag}\r\n\r\n"))
        };
        let (status, _, body) = conditional("If-None-Match", e1);
        assert_eq!((status.as_str(), body.len()), ("HTTP/1.1 304 Not Modified", 0));
        assert_eq!(conditional("If-None-Match", e2).0, "HTTP/1.1 200 OK");
        assert_eq!(conditional("If-Match", e2).0, "HTTP/1.1 412 Precondition Failed");
        // a range under If-Range is served only while the tag still matches
        let if_range = |tag: &str| {
            request(&server, &format!("GET {path} HTTP/1.1\r\nRange: bytes=0-9\r\nIf-Range: {tag}\r\n\r\n"))
        };
        assert_eq!(if_range(e1).2.len(), 10);
        assert_eq!(if_range(e2).2.len(), 100_000);
    }

    /// Idle keep-alive connections (a browser holds several) must not keep a new one waiting:
    /// tiny_http's pool did, once four were open.
    #[test]
    fn idle_connections_do_not_hold_back_new_ones() {
        let (_a, _b, server) = site();
        let mut idle: Vec<TcpStream> = Vec::new();
        for _ in 0..8 {
            let mut s = TcpStream::connect(server.addr).unwrap();
            s.write_all(b"GET /secret.txt HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap();
            assert!(parse(&buf[..n]).2.ends_with(b"no"), "kept alive and answered");
            idle.push(s);
        }
        // the first connection, still open, answers a second request
        idle[0].write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut buf = [0u8; 4096];
        let n = idle[0].read(&mut buf).unwrap();
        assert_eq!(parse(&buf[..n]).2, b"<p>hi</p>");
        let (status, _, body) = get(&server, "/model/tiny/shard-00000.bin");
        assert_eq!((status.as_str(), body.len()), ("HTTP/1.1 200 OK", 100_000));
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
        // a header HTTP cannot carry is refused when the server starts, not when a file is served
        for (name, value) in [("Bad Name", "v"), ("X-Ok", "line\nbreak")] {
            assert!(Server::start(vec![Mount::new("", a.path()).with_header(name, value)]).is_err());
        }
    }

    #[test]
    fn dropping_the_server_stops_it() {
        let (_a, _b, server) = site();
        let addr = server.addr;
        drop(server);
        assert!(TcpStream::connect(addr).is_err());
    }
}
