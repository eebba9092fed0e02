//! Who may call the API: only requests addressed to a loopback name, changes only
//! from this API's own page or a program without a browser's `Origin`, and the
//! API token (`crate::access`) for conversations and anything that changes state.
//! The one-time sign-in link and `/login` turn the token into a browser cookie.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::error;
use super::wire::SignInLink;
use crate::runtime::Service;
use crate::util::is_loopback_authority;

/// Listening on loopback is not enough against a web page in a local browser: a
/// page can send requests to 127.0.0.1 (CSRF) or rebind its own name to it (DNS
/// rebinding). Refuse a `Host` that is not exactly one loopback name, and, on
/// anything that changes state, an `Origin` that is not this API's own
/// (`http://` a loopback name and this API's port): another local web app on
/// another port is another origin.
pub(super) async fn loopback_only(
    State(s): State<Service>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match refusal(req.headers(), req.method(), s.config.api.listen.port()) {
        Some(why) => error(StatusCode::FORBIDDEN, why),
        None => next.run(req).await,
    }
}

/// The API token (`crate::access`): conversation calls and every call that
/// changes something need it, as a bearer token (the CLI, the tray) or a
/// browser's session cookie (whose state-changing calls must carry the API's
/// own `Origin`, checked by [`loopback_only`]).
pub(super) async fn guard(
    State(s): State<Service>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use crate::access::Proof;
    let method = req.method().clone();
    if !crate::access::needs_token(&method, req.uri().path()) {
        return next.run(req).await;
    }
    match s.access.proof(req.headers()) {
        Proof::Bearer => next.run(req).await,
        Proof::Cookie
            if method != axum::http::Method::GET
                && method != axum::http::Method::HEAD
                && !req.headers().contains_key(axum::http::header::ORIGIN) =>
        {
            error(
                StatusCode::FORBIDDEN,
                "a browser's call that changes something must carry its Origin",
            )
        }
        Proof::Cookie => next.run(req).await,
        Proof::None => {
            let mut r = error(StatusCode::UNAUTHORIZED, s.access.missing());
            r.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"robbie-mesh\""),
            );
            r
        }
    }
}

/// `POST /v1/auth/link`: a one-time link that signs a browser in.
pub(super) async fn sign_in_link(State(s): State<Service>) -> Json<SignInLink> {
    let code = s.access.new_code();
    Json(SignInLink {
        url: format!("http://{}/login?code={code}", s.config.api.listen),
    })
}

#[derive(Deserialize)]
pub(super) struct LoginQuery {
    code: Option<String>,
}

/// `GET /login?code=…`: the browser gets its session cookie and the dashboard.
pub(super) async fn login(
    State(s): State<Service>,
    axum::extract::Query(q): axum::extract::Query<LoginQuery>,
) -> Response {
    match q.code.as_deref().and_then(|c| s.access.redeem(c)) {
        Some(cookie) => {
            let mut r = StatusCode::SEE_OTHER.into_response();
            let h = r.headers_mut();
            h.insert(
                axum::http::header::LOCATION,
                axum::http::HeaderValue::from_static("/"),
            );
            if let Ok(v) = axum::http::HeaderValue::from_str(&cookie) {
                h.insert(axum::http::header::SET_COOKIE, v);
            }
            h.insert(
                axum::http::header::CACHE_CONTROL,
                axum::http::HeaderValue::from_static("no-store"),
            );
            r
        }
        None => error(
            StatusCode::FORBIDDEN,
            "this sign-in link was used already or has expired (they are good once, for two minutes): run `robbie-mesh dashboard` again",
        ),
    }
}

fn refusal(
    headers: &axum::http::HeaderMap,
    method: &axum::http::Method,
    port: u16,
) -> Option<String> {
    // Exactly one, readable: a duplicated or garbled header must not let a
    // request through that a clean one would not.
    let one = |name: axum::http::HeaderName| -> Result<Option<&str>, String> {
        let mut all = headers.get_all(&name).iter();
        match (all.next(), all.next()) {
            (None, _) => Ok(None),
            (Some(_), Some(_)) => Err(format!("more than one {name} header")),
            (Some(v), None) => v
                .to_str()
                .map(Some)
                .map_err(|_| format!("the {name} header is not readable text")),
        }
    };
    let host = match one(axum::http::header::HOST) {
        Ok(Some(h)) => h,
        Ok(None) => return Some("a request needs a Host header".into()),
        Err(why) => return Some(why),
    };
    if !is_loopback_authority(host) {
        return Some(format!(
            "Host `{}` is not a loopback address",
            crate::config::cut(host)
        ));
    }
    if method != axum::http::Method::GET && method != axum::http::Method::HEAD {
        match one(axum::http::header::ORIGIN) {
            Err(why) => return Some(why),
            Ok(Some(origin)) if !is_own_origin(origin, port) => {
                return Some(format!(
                    "requests from origin `{}` are refused (only this API's own page, http://127.0.0.1:{port}, may change things)",
                    crate::config::cut(origin)
                ));
            }
            Ok(_) => {}
        }
    }
    None
}

/// `http://` + a loopback name + exactly this API's port.
fn is_own_origin(origin: &str, port: u16) -> bool {
    let Some(authority) = origin.strip_prefix("http://") else {
        return false;
    };
    let Some((_, p)) = authority.rsplit_once(':') else {
        return false;
    };
    p.parse::<u16>().ok() == Some(port) && is_loopback_authority(authority)
}

#[cfg(test)]
mod tests {
    use super::refusal;
    use crate::util::is_loopback_authority;
    use axum::http::{HeaderMap, HeaderValue, Method};

    fn headers(pairs: &[(&'static str, &[u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_bytes(v).expect("value"));
        }
        h
    }

    #[test]
    fn only_this_apis_own_origin_may_change_state() {
        let post = Method::POST;
        let ok = |pairs: &[(&'static str, &[u8])]| refusal(&headers(pairs), &post, 8007);
        assert_eq!(
            ok(&[("host", b"127.0.0.1:8007")]),
            None,
            "the CLI sends no Origin"
        );
        assert_eq!(
            ok(&[
                ("host", b"127.0.0.1:8007"),
                ("origin", b"http://127.0.0.1:8007")
            ]),
            None
        );
        assert_eq!(
            ok(&[
                ("host", b"localhost:8007"),
                ("origin", b"http://localhost:8007")
            ]),
            None
        );
        for (pairs, why) in [
            (
                &[
                    ("host", &b"127.0.0.1:8007"[..]),
                    ("origin", b"http://localhost:3000"),
                ][..],
                "origin",
            ),
            (
                &[("host", b"127.0.0.1:8007"), ("origin", b"http://127.0.0.1")],
                "origin",
            ),
            (
                &[
                    ("host", b"127.0.0.1:8007"),
                    ("origin", b"https://127.0.0.1:8007"),
                ],
                "origin",
            ),
            (
                &[("host", b"127.0.0.1:8007"), ("origin", b"null")],
                "origin",
            ),
            (
                &[
                    ("host", b"127.0.0.1:8007"),
                    ("origin", b"http://127.0.0.1:8007"),
                    ("origin", b"http://evil.example"),
                ],
                "more than one",
            ),
            (
                &[
                    ("host", b"127.0.0.1:8007"),
                    ("origin", b"http://127.0.0.1:8007\xff"),
                ],
                "not readable",
            ),
            (
                &[("host", b"127.0.0.1:8007"), ("host", b"evil.example")],
                "more than one",
            ),
            (&[("host", b"evil.example:8007")], "not a loopback"),
            (&[], "needs a Host"),
        ] {
            let got = ok(pairs).unwrap_or_default();
            assert!(got.contains(why), "{pairs:?}: {got}");
        }
        // Reading is not changing: a GET with a foreign Origin is answered
        // (the browser keeps the answer from the page without CORS headers).
        assert_eq!(
            refusal(
                &headers(&[
                    ("host", b"127.0.0.1:8007"),
                    ("origin", b"http://localhost:3000")
                ]),
                &Method::GET,
                8007
            ),
            None
        );
    }

    #[test]
    fn loopback_authorities() {
        for ok in [
            "127.0.0.1:8007",
            "localhost:8007",
            "LOCALHOST",
            "[::1]:8007",
            "127.0.0.2",
        ] {
            assert!(is_loopback_authority(ok), "{ok}");
        }
        for bad in [
            "evil.example:8007",
            "192.168.1.2:8007",
            "",
            "[2001:db8::1]:80",
            "127.0.0.1.evil.example",
        ] {
            assert!(!is_loopback_authority(bad), "{bad}");
        }
    }
}
