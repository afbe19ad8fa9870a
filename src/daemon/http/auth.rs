//! Who may use the HTTP server. State without I/O: the token, and the
//! checks a request passes before its handler runs.
//!
//! - With `http.token_file`, every request but `/healthz` and the login
//!   form carries the token: `Authorization: Bearer <token>` (scripts,
//!   Prometheus) or the `shitu_token` cookie the login form sets (a
//!   browser). Without it (the default, loopback only) there is none.
//! - A request that changes something (any method but GET and HEAD) must
//!   come from the page itself: a browser says where a request comes from
//!   (`Origin`, `Sec-Fetch-Site`), and one from another site is refused, so
//!   a web page elsewhere cannot make an operator's browser change the
//!   gallery. Clients that are not browsers send neither and pass.

use std::path::Path;

use axum::http::{header, HeaderMap, Method};
use sha2::{Digest, Sha256};

/// The cookie the login form sets.
pub const COOKIE: &str = "shitu_token";

/// Shortest token accepted: guessing must be hopeless.
const MIN_TOKEN: usize = 16;

/// The bearer token, kept as its digest (compared in constant time).
#[derive(Clone)]
pub struct Token([u8; 32]);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(…)")
    }
}

impl Token {
    /// The token in `text` (surrounding whitespace ignored).
    pub fn new(text: &str) -> Result<Token, String> {
        let t = text.trim();
        if t.len() < MIN_TOKEN {
            return Err(format!(
                "the token is {} characters; at least {MIN_TOKEN} are needed",
                t.len()
            ));
        }
        if t.chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == ';')
        {
            return Err("the token holds spaces, control characters or ';' (it travels in a header and a cookie)".into());
        }
        Ok(Token(Sha256::digest(t.as_bytes()).into()))
    }

    /// Reads `http.token_file`.
    pub fn read(path: &Path) -> Result<Token, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("http.token_file {}: {e}", path.display()))?;
        Token::new(&text).map_err(|e| format!("http.token_file {}: {e}", path.display()))
    }

    /// Whether `given` is the token.
    pub fn matches(&self, given: &str) -> bool {
        let d: [u8; 32] = Sha256::digest(given.trim().as_bytes()).into();
        // Constant time: no early exit on the first differing byte.
        d.iter().zip(self.0).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }

    /// Whether the request carries the token, as a bearer or as the cookie.
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        let bearer = headers
            .get_all(header::AUTHORIZATION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| v.strip_prefix("Bearer "));
        let cookies = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='));
        bearer.chain(cookies).any(|t| self.matches(t))
    }
}

/// Whether the request names this box by a loopback name (`localhost`,
/// `127.0.0.1`, `[::1]`, any port). Without a token, the server answers
/// only such requests: a web page elsewhere whose name was pointed at
/// 127.0.0.1 (DNS rebinding) makes the browser send its own name as Host,
/// and gets nothing, neither frames nor changes.
pub fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        // HTTP/1.1 requires Host; a request without one comes from no browser.
        return true;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(n, _)| n),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Why a changing request is refused as coming from elsewhere, if it is.
pub fn cross_site(method: &Method, headers: &HeaderMap) -> Option<String> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return None;
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        // "http://host:port" or "https://…": the authority must be the Host asked.
        let authority = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        return match (authority, host) {
            (Some(a), Some(h)) if a.eq_ignore_ascii_case(h) => None,
            _ => Some(format!(
                "a {method} from {origin:?} to {}: changes are taken from this box's own page only",
                host.unwrap_or("?")
            )),
        };
    }
    match headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
    {
        Some("same-origin") | Some("none") | None => None,
        Some(other) => Some(format!(
            "a {method} from another site (Sec-Fetch-Site: {other}): changes are taken from this box's own page only"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn the_token_is_taken_as_bearer_or_cookie_and_nothing_else() {
        let t = Token::new("  s3cret-token-0123456789\n").unwrap();
        assert!(t.allows(&headers(&[(
            "authorization",
            "Bearer s3cret-token-0123456789"
        )])));
        assert!(t.allows(&headers(&[(
            "cookie",
            "a=b; shitu_token=s3cret-token-0123456789"
        )])));
        assert!(!t.allows(&headers(&[(
            "authorization",
            "Bearer s3cret-token-012345678"
        )])));
        assert!(!t.allows(&headers(&[("authorization", "s3cret-token-0123456789")])));
        assert!(!t.allows(&headers(&[(
            "cookie",
            "shitu_token_x=s3cret-token-0123456789"
        )])));
        assert!(!t.allows(&HeaderMap::new()));
        assert!(Token::new("short").unwrap_err().contains("at least 16"));
        assert!(Token::new("has a space in it, long").is_err());
    }

    #[test]
    fn only_loopback_names_are_served_without_a_token() {
        for ok in [
            "127.0.0.1:8080",
            "localhost",
            "LOCALHOST:1",
            "[::1]:8080",
            "127.0.0.2",
        ] {
            assert!(loopback_host(&headers(&[("host", ok)])), "{ok}");
        }
        for bad in [
            "evil.example:8080",
            "10.0.0.5:8080",
            "[fe80::1]:80",
            "localhost.evil.example",
        ] {
            assert!(!loopback_host(&headers(&[("host", bad)])), "{bad}");
        }
    }

    #[test]
    fn changes_from_another_site_are_refused() {
        let post = Method::POST;
        let same = headers(&[
            ("host", "10.0.0.5:8080"),
            ("origin", "http://10.0.0.5:8080"),
        ]);
        assert_eq!(cross_site(&post, &same), None);
        let other = headers(&[("host", "10.0.0.5:8080"), ("origin", "http://evil.example")]);
        assert!(cross_site(&post, &other).unwrap().contains("evil.example"));
        let null = headers(&[("host", "10.0.0.5:8080"), ("origin", "null")]);
        assert!(cross_site(&post, &null).is_some());
        let fetch = headers(&[("host", "h"), ("sec-fetch-site", "cross-site")]);
        assert!(cross_site(&post, &fetch).is_some());
        // curl and scripts: no Origin, no Sec-Fetch-Site.
        assert_eq!(cross_site(&post, &headers(&[("host", "h")])), None);
        // Reading is not changing.
        assert_eq!(cross_site(&Method::GET, &other), None);
    }
}
