//! HTTP: routing API paths to the store and watches, faults and tokens in front of them, and
//! the admin interface under `/weft-standin/`.

use std::convert::Infallible;
use std::time::Duration;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::error::ApiError;
use super::faults::{FaultRequest, Verdict};
use super::kind::{Filter, Kind};
use super::store::{ListQuery, Part, PatchType};
use super::watch::{self, Start, WatchRequest};
use super::{StandIn, Verb, lock};

/// The body of every response.
pub(crate) type Body = BoxBody<Bytes, Infallible>;

/// Answers one request that arrived on connection `conn`.
pub(crate) async fn handle(standin: StandIn, conn: u64, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    if let Some(rest) = path.strip_prefix(ADMIN_PREFIX) {
        return admin(&standin, conn, rest.to_owned(), req)
            .await
            .unwrap_or_else(|e| error(&e));
    }
    match path.as_str() {
        "/healthz" | "/livez" | "/readyz" => return text(StatusCode::OK, "ok"),
        "/version" => {
            return json_response(
                StatusCode::OK,
                &json!({
                    "major": "1", "minor": "33", "gitVersion": "v1.33.0-weft-standin",
                    "platform": "linux/amd64",
                }),
            );
        }
        _ => {}
    }
    let query = Query::parse(req.uri().query().unwrap_or(""));
    let Some(route) = Route::parse(req.method(), &path, &query) else {
        return error(&ApiError::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        ));
    };
    standin.count(|c| *c.requests.entry((route.verb, route.kind)).or_default() += 1);
    let mut faults = standin.inner.faults_changed.subscribe();
    if !watch::wait_unsilenced(&standin.inner, &mut faults, std::future::pending()).await {
        return error(&ApiError::new(
            503,
            "ServiceUnavailable",
            "the stand-in is shutting down",
        ));
    }
    if !authorized(&standin, &req) {
        standin.count(|c| c.unauthorized += 1);
        return error(&ApiError::new(401, "Unauthorized", "Unauthorized"));
    }
    let verdict = lock(&standin.inner.faults).verdict_for(Instant::now(), route.kind);
    match verdict {
        Verdict::Pass => {}
        Verdict::Fail(code) => {
            standin.count(|c| c.faulted += 1);
            return error(&ApiError::new(code, reason(code), "injected fault"));
        }
        Verdict::Throttle(secs) => {
            standin.count(|c| c.faulted += 1);
            let err = ApiError {
                details: json!({"retryAfterSeconds": secs}),
                ..ApiError::new(
                    429,
                    "TooManyRequests",
                    "too many requests, please try again later",
                )
            };
            let mut resp = error(&err);
            resp.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(secs));
            return resp;
        }
    }
    api(&standin, route, &query, req)
        .await
        .unwrap_or_else(|e| error(&e))
}

/// Serves an API request that passed auth and faults.
async fn api(
    standin: &StandIn,
    route: Route,
    query: &Query,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let Route {
        verb,
        kind,
        ns,
        name,
        part,
    } = route;
    let ns_str = ns.clone().unwrap_or_default();
    match verb {
        Verb::List | Verb::Watch => {
            let filter = Filter::new(ns, query.get("fieldSelector"), query.get("labelSelector"))?;
            if verb == Verb::Watch {
                return watch_response(standin, kind, filter, query);
            }
            let limit = parse_opt::<usize>(query.get("limit"), "limit")?;
            let rv = query.get("resourceVersion").unwrap_or("");
            let exact_rv = if query.get("resourceVersionMatch") == Some("Exact") {
                Some(parse_rv(rv)?)
            } else {
                None
            };
            let list = ListQuery {
                filter,
                limit,
                continue_token: query
                    .get("continue")
                    .filter(|c| !c.is_empty())
                    .map(str::to_owned),
                exact_rv,
            };
            let out = lock(&standin.inner.store).list(kind, &list)?;
            Ok(json_response(StatusCode::OK, &out))
        }
        Verb::Get => {
            let obj = standin
                .get(kind, &ns_str, &name)
                .ok_or_else(|| ApiError::not_found(kind, &name))?;
            Ok(json_response(StatusCode::OK, &obj))
        }
        Verb::Create => {
            let body = read_json(req).await?;
            let obj = standin.write(|s| s.create(kind, &ns_str, body))?;
            Ok(json_response(StatusCode::CREATED, &obj))
        }
        Verb::Update => {
            let body = read_json(req).await?;
            let obj = standin.write(|s| s.replace(kind, &ns_str, &name, body, part, true))?;
            Ok(json_response(StatusCode::OK, &obj))
        }
        Verb::Patch => {
            let content_type = req
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_owned();
            let ty = match content_type.as_str() {
                "application/apply-patch+yaml" => PatchType::Apply,
                "application/merge-patch+json" => PatchType::Merge,
                "application/strategic-merge-patch+json" => PatchType::Strategic,
                other => {
                    return Err(ApiError::new(
                        415,
                        "UnsupportedMediaType",
                        format!("the body of the request was in an unknown format ({other:?})"),
                    ));
                }
            };
            let body = read_json(req).await?;
            let created = ty == PatchType::Apply && standin.get(kind, &ns_str, &name).is_none();
            let obj = standin.write(|s| s.patch(kind, &ns_str, &name, ty, &body, part))?;
            let code = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(json_response(code, &obj))
        }
        Verb::Delete => {
            let obj = standin.write(|s| s.delete(kind, &ns_str, &name))?;
            Ok(json_response(StatusCode::OK, &obj))
        }
    }
}

/// Starts a watch and returns its streaming response.
fn watch_response(
    standin: &StandIn,
    kind: Kind,
    filter: Filter,
    query: &Query,
) -> Result<Response<Body>, ApiError> {
    let start = match query.get("resourceVersion").unwrap_or("") {
        "" | "0" => Start::Now,
        rv => Start::After(parse_rv(rv)?),
    };
    let timeout = parse_opt::<u64>(query.get("timeoutSeconds"), "timeoutSeconds")?
        .filter(|&s| s > 0)
        .map(Duration::from_secs);
    let req = WatchRequest {
        kind,
        filter,
        start,
        bookmarks: is_true(query.get("allowWatchBookmarks")),
        timeout,
        initial_events: is_true(query.get("sendInitialEvents")),
    };
    if req.initial_events && !req.bookmarks {
        return Err(ApiError::new(
            422,
            "Invalid",
            "sendInitialEvents requires allowWatchBookmarks=true",
        ));
    }
    let body = watch::start(standin, req).boxed();
    let mut resp = Response::new(body);
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(resp)
}

/// The admin interface; `rest` is the path after `/weft-standin/`.
async fn admin(
    standin: &StandIn,
    conn: u64,
    rest: String,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Tokens {
        tokens: Option<Vec<String>>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct Bookmarks {
        interval_ms: u64,
    }
    let method = req.method().clone();
    let done = || json_response(StatusCode::OK, &json!({"ok": true}));
    match (method, rest.as_str()) {
        (Method::POST, "faults") => {
            let body = read_json(req).await?;
            let wire: FaultRequest = serde_json::from_value(body)
                .map_err(|e| ApiError::bad_request(format!("fault: {e}")))?;
            let fault = wire.into_fault().map_err(ApiError::bad_request)?;
            standin.fault_sparing(fault, Some(conn));
            Ok(done())
        }
        (Method::GET, "counts") => Ok(json_response(StatusCode::OK, &standin.counts().to_json())),
        (Method::DELETE, "counts") => {
            standin.reset_counts();
            Ok(done())
        }
        (Method::PUT, "tokens") => {
            let body: Tokens = serde_json::from_value(read_json(req).await?)
                .map_err(|e| ApiError::bad_request(format!("tokens: {e}")))?;
            standin.set_tokens(body.tokens);
            Ok(done())
        }
        (Method::PUT, "bookmarks") => {
            let body: Bookmarks = serde_json::from_value(read_json(req).await?)
                .map_err(|e| ApiError::bad_request(format!("bookmarks: {e}")))?;
            standin.set_bookmark_interval(Duration::from_millis(body.interval_ms));
            Ok(done())
        }
        (m, _) => Err(ApiError::new(
            404,
            "NotFound",
            format!("no admin endpoint {m} {ADMIN_PREFIX}{rest}"),
        )),
    }
}

/// An API request, resolved: what it does to which object.
#[derive(Debug)]
struct Route {
    verb: Verb,
    kind: Kind,
    /// The URL's namespace (None: all namespaces, or a cluster-scoped kind).
    ns: Option<String>,
    /// The object's name (empty for collections).
    name: String,
    part: Part,
}

impl Route {
    /// Resolves a method and path; None for paths the stand-in does not serve.
    fn parse(method: &Method, path: &str, query: &Query) -> Option<Self> {
        let segs: Vec<String> = path
            .trim_matches('/')
            .split('/')
            .map(percent_decode)
            .collect();
        let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
        let (core, rest) = match segs.as_slice() {
            ["api", "v1", rest @ ..] => (true, rest),
            ["apis", "networking.k8s.io", "v1", rest @ ..] => (false, rest),
            _ => return None,
        };
        let in_group = |k: Kind| (k == Kind::NetworkPolicy) != core;
        let plural_kind = |p: &str| Kind::ALL.into_iter().find(|k| k.plural() == p);
        // (kind, namespace, name, subresource)
        let (kind, ns, name, sub) = match rest {
            ["namespaces", ns, plural, tail @ ..]
                if plural_kind(plural).is_some_and(Kind::namespaced) =>
            {
                let kind = plural_kind(plural)?;
                match tail {
                    [] => (kind, Some(*ns), "", None),
                    [name] => (kind, Some(*ns), *name, None),
                    [name, sub] => (kind, Some(*ns), *name, Some(*sub)),
                    _ => return None,
                }
            }
            [plural, tail @ ..] => {
                let kind = plural_kind(plural)?;
                match tail {
                    [] => (kind, None, "", None),
                    [name] if !kind.namespaced() => (kind, None, *name, None),
                    [name, sub] if !kind.namespaced() => (kind, None, *name, Some(*sub)),
                    _ => return None,
                }
            }
            [] => return None,
        };
        if !in_group(kind) {
            return None;
        }
        let part = match sub {
            None => Part::Main,
            Some("status") => Part::Status,
            Some(_) => return None,
        };
        let collection = name.is_empty();
        let verb = match (method, collection) {
            (&Method::GET, true) if is_true(query.get("watch")) => Verb::Watch,
            (&Method::GET, true) => Verb::List,
            (&Method::POST, true) if ns.is_some() || !kind.namespaced() => Verb::Create,
            (&Method::GET, false) => Verb::Get,
            (&Method::PUT, false) => Verb::Update,
            (&Method::PATCH, false) => Verb::Patch,
            (&Method::DELETE, false) => Verb::Delete,
            _ => return None,
        };
        if collection && part == Part::Status {
            return None;
        }
        Some(Self {
            verb,
            kind,
            ns: ns.map(str::to_owned),
            name: name.to_owned(),
            part,
        })
    }
}

/// Decoded query parameters (the first value of each name).
#[derive(Debug, Default)]
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: &str) -> Self {
        let pairs = q
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (
                    percent_decode(&k.replace('+', " ")),
                    percent_decode(&v.replace('+', " ")),
                )
            })
            .collect();
        Self(pairs)
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn authorized(standin: &StandIn, req: &Request<Incoming>) -> bool {
    let tokens = lock(&standin.inner.tokens);
    let Some(tokens) = tokens.as_ref() else {
        return true;
    };
    req.headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| tokens.contains(t.trim()))
}

async fn read_json(req: Request<Incoming>) -> Result<Value, ApiError> {
    let body = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| {
            ApiError::new(
                413,
                "RequestEntityTooLarge",
                format!("reading the body: {e}"),
            )
        })?
        .to_bytes();
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))
}

fn parse_rv(rv: &str) -> Result<u64, ApiError> {
    rv.parse()
        .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))
}

fn parse_opt<T: std::str::FromStr>(v: Option<&str>, name: &str) -> Result<Option<T>, ApiError> {
    match v.filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("invalid {name} {v:?}"))),
    }
}

fn is_true(v: Option<&str>) -> bool {
    matches!(v, Some("1" | "true" | "True"))
}

/// Decodes `%XX` escapes; malformed ones stay as they are.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = || {
            let h = s.get(i + 1..i + 3)?;
            u8::from_str_radix(h, 16).ok()
        };
        match (b[i], hex()) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The `Status` reason for an error code.
fn reason(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        409 => "Conflict",
        410 => "Expired",
        422 => "Invalid",
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "InternalError",
    }
}

pub(crate) fn error(e: &ApiError) -> Response<Body> {
    let code = StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(code, &e.status())
}

fn json_response(code: StatusCode, v: &Value) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(v.to_string())).boxed());
    *resp.status_mut() = code;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn text(code: StatusCode, s: &'static str) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from_static(s.as_bytes())).boxed());
    *resp.status_mut() = code;
    resp
}

/// The admin interface's path prefix.
const ADMIN_PREFIX: &str = "/weft-standin/";

/// The largest request body accepted (a real API server's limit is 3 MiB).
const MAX_BODY: usize = 3 << 20;
