//! CORS as vLLM configures Starlette's CORSMiddleware (`--allowed-origins`,
//! `--allowed-methods`, `--allowed-headers`, `--allow-credentials`), done by
//! tower-http's CorsLayer around the whole service: preflights (OPTIONS) are
//! answered before routing and the API key, and every other response, streams
//! included, carries the headers.
//!
//! Where the two differ: a preflight from an origin not allowed gets a 200
//! without `access-control-allow-origin` here, a 400 "Disallowed CORS origin"
//! from Starlette; browsers refuse the request either way.

use std::time::Duration;

use hyper::header::{HeaderName, HeaderValue};
use hyper::Method;
use tower_http::cors::{AllowHeaders, AllowMethods, AllowOrigin, CorsLayer};

/// Starlette's `ALL_METHODS`, what `"*"` stands for.
const ALL_METHODS: [Method; 7] = [
    Method::DELETE,
    Method::GET,
    Method::HEAD,
    Method::OPTIONS,
    Method::PATCH,
    Method::POST,
    Method::PUT,
];

/// Headers Starlette always allows besides the listed ones.
const SAFELISTED_HEADERS: [&str; 4] = [
    "accept",
    "accept-language",
    "content-language",
    "content-type",
];

/// A `--allowed-*` value: a JSON list of strings, as vLLM's `json.loads`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonList(pub Vec<String>);

impl JsonList {
    pub fn parse(s: &str) -> Result<JsonList, String> {
        serde_json::from_str::<Vec<String>>(s)
            .map(JsonList)
            .map_err(|_| format!("must be a JSON list of strings such as '[\"*\"]', got {s:?}"))
    }

    fn wildcard(&self) -> bool {
        self.0.iter().any(|v| v == "*")
    }
}

/// The settings of the four flags.
pub struct CorsConfig<'a> {
    pub origins: &'a JsonList,
    pub methods: &'a JsonList,
    pub headers: &'a JsonList,
    pub credentials: bool,
}

/// The layer, or what is wrong with a flag's value.
pub fn layer(c: &CorsConfig) -> Result<CorsLayer, String> {
    let origin = if c.origins.wildcard() {
        // With credentials a browser refuses `*`: the origin is echoed (as
        // Starlette does for a preflight, and for a request with cookies).
        if c.credentials {
            AllowOrigin::mirror_request()
        } else {
            AllowOrigin::any()
        }
    } else {
        let values = c
            .origins
            .0
            .iter()
            .map(|o| {
                HeaderValue::from_str(o)
                    .map_err(|_| format!("--allowed-origins: {o:?} is not a valid origin"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        AllowOrigin::list(values)
    };
    let methods = if c.methods.wildcard() {
        ALL_METHODS.to_vec()
    } else {
        c.methods
            .0
            .iter()
            .map(|m| {
                Method::from_bytes(m.as_bytes())
                    .map_err(|_| format!("--allowed-methods: {m:?} is not an HTTP method"))
            })
            .collect::<Result<Vec<_>, _>>()?
    };
    let headers = if c.headers.wildcard() {
        // Starlette echoes the requested headers.
        AllowHeaders::mirror_request()
    } else {
        let mut names = SAFELISTED_HEADERS
            .iter()
            .map(|h| h.to_string())
            .chain(c.headers.0.iter().map(|h| h.to_ascii_lowercase()))
            .map(|h| {
                HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| format!("--allowed-headers: {h:?} is not a header name"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        names.dedup();
        AllowHeaders::list(names)
    };
    Ok(CorsLayer::new()
        .allow_origin(origin)
        .allow_methods(AllowMethods::list(methods))
        .allow_headers(headers)
        .allow_credentials(c.credentials)
        .max_age(Duration::from_secs(600)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(s: &str) -> JsonList {
        JsonList::parse(s).unwrap()
    }

    #[test]
    fn flags_parse_as_json_lists() {
        assert_eq!(list(r#"["*"]"#).0, ["*"]);
        assert_eq!(list(r#"["http://a.b", "http://c.d"]"#).0.len(), 2);
        assert!(JsonList::parse("*").is_err());
        assert!(JsonList::parse(r#"[1]"#).is_err());
    }

    #[test]
    fn every_combination_builds() {
        // tower-http panics on credentials with a wildcard: never built here.
        let star = list(r#"["*"]"#);
        let some = list(r#"["http://localhost:3000"]"#);
        let methods = list(r#"["GET", "POST"]"#);
        let headers = list(r#"["X-Custom", "Authorization"]"#);
        for origins in [&star, &some] {
            for m in [&star, &methods] {
                for h in [&star, &headers] {
                    for credentials in [false, true] {
                        let c = CorsConfig {
                            origins,
                            methods: m,
                            headers: h,
                            credentials,
                        };
                        let layer = layer(&c).unwrap();
                        let _ = tower::Layer::layer(&layer, ());
                    }
                }
            }
        }
    }

    #[test]
    fn bad_values_are_named() {
        let star = list(r#"["*"]"#);
        let bad = list(r#"["bad\nvalue"]"#);
        let e = layer(&CorsConfig {
            origins: &bad,
            methods: &star,
            headers: &star,
            credentials: false,
        })
        .err()
        .unwrap();
        assert!(e.contains("--allowed-origins"), "{e}");
        let e = layer(&CorsConfig {
            origins: &star,
            methods: &list(r#"["GE T"]"#),
            headers: &star,
            credentials: false,
        })
        .err()
        .unwrap();
        assert!(e.contains("--allowed-methods"), "{e}");
    }
}
