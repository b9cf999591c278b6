//! The console without a browser: a plain HTTP/1.1 client over a TCP
//! socket that posts forms the way a browser does (cookie, Origin, CSRF
//! field), and a broker with its console on `127.0.0.1:0`.

use std::{sync::Arc, time::Duration};

use stevedore::{auth::Role, config::Config, pb};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::{test_tokens, TestServer};

pub const ADMIN: &str = "console-admin-token-0123456789";
pub const PUBLISHER: &str = "console-publisher-token-0123456789";
pub const HEADER_VALUE: &str = "header-value-that-must-never-show-7d1f";

/// A response.
pub struct Page {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Page {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The page's CSRF token (every logged-in page has the logout form).
    pub fn csrf(&self) -> String {
        let at = self
            .body
            .find("name=\"csrf\" value=\"")
            .expect("a CSRF field")
            + 19;
        self.body[at..].split('"').next().unwrap().to_owned()
    }
}

/// A browser's worth of HTTP: one cookie, Origin on POSTs.
pub struct Client {
    /// `127.0.0.1:port`
    pub host: String,
    pub cookie: Option<String>,
}

impl Client {
    pub async fn new(server: &TestServer) -> Self {
        let url = server.started().await.console_url.expect("console served");
        Self::at(&url)
    }

    /// A client of the console at `url` (`http://127.0.0.1:port`).
    pub fn at(url: &str) -> Self {
        Self {
            host: url.trim_start_matches("http://").to_owned(),
            cookie: None,
        }
    }

    pub async fn raw(&self, method: &str, path: &str, extra: &[(&str, &str)], body: &str) -> Page {
        let mut stream = TcpStream::connect(&self.host).await.unwrap();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\ncontent-length: {}\r\n",
            self.host,
            body.len()
        );
        if let Some(c) = &self.cookie {
            req.push_str(&format!("cookie: {c}\r\n"));
        }
        if method == "POST" {
            req.push_str("content-type: application/x-www-form-urlencoded\r\n");
        }
        for (k, v) in extra {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut out))
            .await
            .expect("response in time")
            .unwrap();
        parse_response(&String::from_utf8(out).unwrap())
    }

    pub async fn get(&self, path: &str) -> Page {
        self.raw("GET", path, &[], "").await
    }

    pub async fn post(&self, path: &str, form: &[(&str, &str)]) -> Page {
        let origin = format!("http://{}", self.host);
        self.raw("POST", path, &[("origin", &origin)], &encode(form))
            .await
    }

    /// Logs in with `token`; keeps the cookie on success.
    pub async fn login(&mut self, token: &str) -> Page {
        let page = self.post("/login", &[("token", token)]).await;
        if let Some(c) = page.header("set-cookie") {
            self.cookie = Some(c.split(';').next().unwrap().to_owned());
        }
        page
    }

    /// Follows the one-time login link.
    pub async fn login_once(&mut self, server: &TestServer) -> Page {
        let path = server
            .started()
            .await
            .console_login
            .expect("a one-time link");
        self.follow_login(&path).await
    }

    /// Follows the one-time login link's path.
    pub async fn follow_login(&mut self, path: &str) -> Page {
        let page = self.get(path).await;
        if let Some(c) = page.header("set-cookie") {
            self.cookie = Some(c.split(';').next().unwrap().to_owned());
        }
        page
    }
}

/// A raw HTTP/1.1 response as a [`Page`].
pub fn parse_response(text: &str) -> Page {
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    Page {
        status,
        headers,
        body: body.to_owned(),
    }
}

pub fn encode(form: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in form {
        s.append_pair(k, v);
    }
    s.finish()
}

pub async fn start_console(
    tokens: &[(&str, Role, &str)],
    tweak: impl FnOnce(&mut Config),
) -> TestServer {
    let tokens = test_tokens(tokens);
    TestServer::start_with(Arc::new(tempfile::tempdir().unwrap()), move |c| {
        c.console_listen = Some("127.0.0.1:0".parse().unwrap());
        c.tokens = tokens;
        tweak(c);
    })
    .await
}

pub async fn endpoints(server: &TestServer, token: Option<&str>) -> Vec<pb::Endpoint> {
    let mut admin = server.admin_as(token).await;
    admin
        .list_endpoints(pb::ListEndpointsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .endpoints
}

/// Creates an endpoint to `url` through the form; returns its id and the
/// page that showed the secret.
pub async fn create(c: &Client, url: &str, extra: &[(&str, &str)]) -> (String, Page) {
    let csrf = c.get("/endpoints/new").await.csrf();
    let mut form = vec![
        ("csrf", csrf.as_str()),
        ("url", url),
        ("event_types", "pick.confirmed"),
        ("header_name", "X-Api-Key"),
        ("header_value", HEADER_VALUE),
        ("ordering", "key"),
        ("start", "latest"),
    ];
    form.extend_from_slice(extra);
    let page = c.post("/endpoints/new", &form).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let main = &page.body[page.body.find("<main>").unwrap()..];
    let at = main.find("href=\"/endpoints/").unwrap() + 17;
    let id = main[at..].split('"').next().unwrap().to_owned();
    (id, page)
}

/// Opens `c`'s live tail; returns the stream once the response head
/// arrived (the subscription is then in place) and what was read.
pub async fn open_live(c: &Client) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(&c.host).await.unwrap();
    let req = format!(
        "GET /live/events HTTP/1.1\r\nhost: {}\r\ncookie: {}\r\naccept: text/event-stream\r\n\r\n",
        c.host,
        c.cookie.as_ref().unwrap()
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut seen = String::new();
    read_until(&mut stream, &mut seen, "\r\n\r\n").await;
    (stream, seen)
}

/// Reads `stream` into `seen` until it holds `needle` (at most 10 s).
pub async fn read_until(stream: &mut TcpStream, seen: &mut String, needle: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 4096];
    while !seen.contains(needle) {
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} within 10 s: {seen}"))
            .unwrap();
        assert!(n > 0, "{seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

pub fn secret_in(page: &Page) -> String {
    let at = page
        .body
        .find("<pre id=\"secret\" class=\"secret\">")
        .expect("the secret")
        + 32;
    page.body[at..].split('<').next().unwrap().to_owned()
}
