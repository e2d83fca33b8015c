//! The browser console at `/console`: sessions, CSRF, escaping, isolation (plain HTTP), and
//! real headless Chromium driven by Playwright for Python (`browser.py`).

mod browser;
mod demo;
mod http;

use std::time::Duration;

use walhook::subscriptions::store;

use crate::support::api::ApiFixture;

/// A plain HTTP client of the console that keeps its cookies by hand and never follows
/// redirects (so they can be asserted).
pub struct Console {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    client: reqwest::Client,
    /// `name=value` cookies sent with every request.
    pub cookies: Vec<(String, String)>,
}

/// One answer.
pub struct Page {
    /// Status.
    pub status: u16,
    /// Every `Set-Cookie` value.
    pub set_cookies: Vec<String>,
    /// Headers.
    pub headers: reqwest::header::HeaderMap,
    /// Body.
    pub text: String,
}

impl Page {
    /// The first hidden `csrf` field's value.
    pub fn csrf(&self) -> String {
        field(&self.text, "csrf")
    }

    /// A header ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }
}

/// The value of the first `name="NAME" value="…"` in `html`.
pub fn field(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} field in\n{html}"))
        + marker.len();
    html[start..].split('"').next().unwrap().to_owned()
}

/// `application/x-www-form-urlencoded` of `fields`.
pub fn form(fields: &[(&str, &str)]) -> String {
    let encode = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

impl Console {
    /// A client of the console of `fixture`'s daemon, with no cookies.
    pub fn new(fixture: &ApiFixture) -> Console {
        Console::at(&fixture.api.base)
    }

    /// A client of the console at `base` (`http://HOST:PORT`), with no cookies.
    pub fn at(base: &str) -> Console {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Console {
            base: base.to_owned(),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookies: Vec::new(),
        }
    }

    async fn send(&mut self, method: &str, path: &str, body: Option<String>) -> Page {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if !self.cookies.is_empty() {
            let cookie: Vec<String> = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            request = request.header("cookie", cookie.join("; "));
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let set_cookies: Vec<String> = headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        for set in &set_cookies {
            let pair = set.split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            self.cookies.retain(|(k, _)| k != name);
            if !value.is_empty() {
                self.cookies.push((name.to_owned(), value.to_owned()));
            }
        }
        Page {
            status,
            set_cookies,
            headers,
            text: response.text().await.unwrap(),
        }
    }

    /// `GET path`.
    pub async fn get(&mut self, path: &str) -> Page {
        self.send("GET", path, None).await
    }

    /// `POST path` with a form.
    pub async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Page {
        self.send("POST", path, Some(form(fields))).await
    }

    /// Logs in with `token` through the login form; the answer to the POST.
    pub async fn login(&mut self, token: &str) -> Page {
        let page = self.get("/console/login").await;
        assert_eq!(page.status, 200, "{}", page.text);
        let csrf = page.csrf();
        self.post("/console/login", &[("csrf", &csrf), ("token", token)])
            .await
    }
}

/// An admin token for `fixture`'s database: (id, token).
pub async fn admin_token(fixture: &ApiFixture) -> (uuid::Uuid, String) {
    let mut conn = store::connect(&fixture.db.database()).await.unwrap();
    walhook::api::auth::create_with(&mut conn, "ops", &["*".to_owned()], true)
        .await
        .unwrap()
}

/// A one-time login code for token `id`, valid for `ttl`.
pub async fn login_code(fixture: &ApiFixture, id: uuid::Uuid, ttl: Duration) -> String {
    let mut conn = store::connect(&fixture.db.database()).await.unwrap();
    walhook::console::session::create_login_code(&mut conn, id, ttl)
        .await
        .unwrap()
}

/// Subscribes `url` to `events` through the REST API with `token`; the new id.
pub async fn subscribe(fixture: &ApiFixture, token: &str, url: &str, events: &str) -> String {
    let created = fixture
        .api
        .raw(
            "POST",
            "/v1/hooks",
            Some(token),
            Some(format!(r#"{{"events": {events}, "target_url": "{url}"}}"#)),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    created.json["id"].as_str().unwrap().to_owned()
}
