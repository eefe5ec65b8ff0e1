//! The HTTP side: one request to one host, with retries, redirects and authentication,
//! and the mirror loop over a registry's hosts.
//!
//! One request's life:
//! ```text
//! send_host(host, repo, path)
//!   loop:  add Authorization only if the URL is still on the host's own origin
//!          GET/HEAD --> connect error / 429 / 5xx --> back off, retry (bounded)
//!                   --> 3xx Location --> follow (bounded); another origin drops
//!                                        Authorization and the host's headers for good
//!                   --> 401 (once) --> Basic: credentials for this host
//!                                      Bearer: token from the realm (https unless the
//!                                      registry is http), cached per host + repository
//!                   --> other 4xx --> error with the registry's own error code
//!                   --> 2xx --> the response
//! ```
//! Messages and logs carry [`redact_url`] forms only: no query strings (signed storage
//! URLs), no credentials, no tokens.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{
    ACCEPT, AUTHORIZATION, CONTENT_LENGTH, LOCATION, RANGE, RETRY_AFTER, USER_AGENT,
};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::auth::{
    Challenge, Credentials, DockerConfig, TokenResponse, form_escape, parse_challenges,
    realm_allowed,
};
use crate::hosts::{Capabilities, HostOptions, RegistryHost, hosts_for};
use crate::redact::redact_url;
use strata_proto::{Error, ErrorKind, Result};

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

const TOKEN_RESPONSE_MAX: u64 = 1 << 20;
const ERROR_BODY_MAX: u64 = 16 << 10;

/// Bounded retries with exponential backoff, for connect errors, 429 and 5xx.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts per request and host, including the first (at least 1).
    pub max_attempts: u32,
    /// Delay before the first retry; doubled for each further one.
    pub initial_backoff: Duration,
    /// Upper bound of one delay (also caps a server's `Retry-After`).
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .initial_backoff
            .saturating_mul(1u32.checked_shl(retry).unwrap_or(u32::MAX));
        retry_after.unwrap_or(exp).min(self.max_backoff)
    }
}

/// How the client reaches registries.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Hosts directory and `--plain-http`.
    pub hosts: HostOptions,
    /// `--user`: credentials for the reference's own registry (never sent to mirrors).
    pub user: Option<Credentials>,
    /// Credentials by host, normally from `~/.docker/config.json`.
    pub docker_config: DockerConfig,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Time from sending a request to its response headers.
    pub response_timeout: Duration,
    /// Longest pause between two chunks of a response body.
    pub read_timeout: Duration,
    /// Redirects followed per request.
    pub max_redirects: u32,
    /// `User-Agent` header.
    pub user_agent: String,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            hosts: HostOptions::default(),
            user: None,
            docker_config: DockerConfig::default(),
            retry: RetryPolicy::default(),
            connect_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(60),
            read_timeout: Duration::from_secs(60),
            max_redirects: 8,
            user_agent: concat!("strata/", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }
}

#[derive(Clone)]
enum CachedAuth {
    Basic(String),
    Bearer { header: String, expires: Instant },
}

/// A registry client: cheap to clone, safe to share between tasks.
#[derive(Clone)]
pub struct RegistryClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient").finish_non_exhaustive()
    }
}

struct Inner {
    opts: ClientOptions,
    http: Mutex<HashMap<(bool, Vec<std::path::PathBuf>), HttpClient>>,
    // Keyed by (host authority, repository); Basic answers use repository "".
    auth: Mutex<HashMap<(String, String), CachedAuth>>,
}

/// A request, relative to a host's API root.
pub(crate) struct Req<'a> {
    pub(crate) method: Method,
    pub(crate) repo: &'a str,
    /// `/manifests/<ref>` or `/blobs/<digest>`.
    pub(crate) path: String,
    pub(crate) accept: Option<&'static str>,
    /// Inclusive byte range for the `Range` header.
    pub(crate) range: Option<(u64, u64)>,
    /// A body to send (pushes), with its content type.
    pub(crate) body: Option<(Bytes, &'static str)>,
    /// An absolute URL on the host to use instead of `path` (an upload's `Location`).
    pub(crate) url: Option<Uri>,
}

impl<'a> Req<'a> {
    /// A bodiless request of `path` in `repo`.
    pub(crate) fn new(method: Method, repo: &'a str, path: String) -> Self {
        Req {
            method,
            repo,
            path,
            accept: None,
            range: None,
            body: None,
            url: None,
        }
    }
}

impl RegistryClient {
    /// A client with `opts`.
    pub fn new(opts: ClientOptions) -> RegistryClient {
        RegistryClient {
            inner: Arc::new(Inner {
                opts,
                http: Mutex::new(HashMap::new()),
                auth: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The client's options.
    pub fn options(&self) -> &ClientOptions {
        &self.inner.opts
    }

    /// The hosts to try for `registry` that have every capability in `need`, in order.
    pub fn hosts(&self, registry: &str, need: Capabilities) -> Result<Vec<RegistryHost>> {
        let hosts: Vec<RegistryHost> = hosts_for(registry, &self.inner.opts.hosts)?
            .into_iter()
            .filter(|h| h.capabilities.contains(need))
            .collect();
        if hosts.is_empty() {
            return Err(Error::new(
                ErrorKind::FailedPrecondition,
                format!("no host of registry {registry} has the capabilities needed"),
            ));
        }
        Ok(hosts)
    }

    fn http_client(&self, host: &RegistryHost) -> Result<HttpClient> {
        let key = (host.skip_verify, host.ca.clone());
        let mut map = self.inner.http.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(&key) {
            return Ok(c.clone());
        }
        let tls = tls_config(host)?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(self.inner.opts.connect_timeout));
        let conn = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(conn);
        map.insert(key, client.clone());
        Ok(client)
    }

    fn credentials_for(&self, host: &RegistryHost) -> Option<Credentials> {
        if host.is_upstream
            && let Some(u) = &self.inner.opts.user
        {
            return Some(u.clone());
        }
        self.inner
            .opts
            .docker_config
            .credentials_for(&host.authority)
            .cloned()
    }

    fn cached_auth(&self, host: &RegistryHost, repo: &str) -> Option<String> {
        let map = self.inner.auth.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(CachedAuth::Bearer { header, expires }) =
            map.get(&(host.authority.clone(), repo.to_owned()))
            && *expires > Instant::now()
        {
            return Some(header.clone());
        }
        match map.get(&(host.authority.clone(), String::new())) {
            Some(CachedAuth::Basic(h)) => Some(h.clone()),
            _ => None,
        }
    }

    fn forget_auth(&self, host: &RegistryHost, repo: &str) {
        let mut map = self.inner.auth.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&(host.authority.clone(), repo.to_owned()));
        map.remove(&(host.authority.clone(), String::new()));
    }

    /// Sends `req` to one host: retries, redirects, one round of authentication.
    pub(crate) async fn send_host(
        &self,
        host: &RegistryHost,
        req: &Req<'_>,
    ) -> Result<Response<Incoming>> {
        let opts = &self.inner.opts;
        let client = self.http_client(host)?;
        let mut uri: Uri = match &req.url {
            Some(u) => u.clone(),
            None => format!("{}/{}{}", host.base_url(), req.repo, req.path)
                .parse()
                .map_err(|_| {
                    Error::invalid(format!("cannot build a URL for {}", host.authority))
                })?,
        };
        let origin = origin_of(&uri);
        let mut on_origin = true;
        let mut redirects = 0;
        let mut retry = 0;
        let mut auth_round = false;
        loop {
            let auth = if on_origin {
                self.cached_auth(host, req.repo)
            } else {
                None
            };
            let sent_auth = auth.is_some();
            let mut b = Request::builder()
                .method(req.method.clone())
                .uri(uri.clone())
                .header(USER_AGENT, &opts.user_agent);
            if let Some(a) = req.accept {
                b = b.header(ACCEPT, a);
            }
            if let Some((s, e)) = req.range {
                b = b.header(RANGE, format!("bytes={s}-{e}"));
            }
            if on_origin {
                for (k, v) in &host.headers {
                    b = b.header(k.as_str(), v.as_str());
                }
            }
            if let Some(a) = auth {
                b = b.header(AUTHORIZATION, a);
            }
            let body = match &req.body {
                Some((bytes, content_type)) => {
                    b = b.header(http::header::CONTENT_TYPE, *content_type);
                    bytes.clone()
                }
                None => Bytes::new(),
            };
            let request = b
                .body(Full::new(body))
                .map_err(|e| Error::invalid("build request").with_source(e))?;
            let shown = redact_url(&uri);
            let result = tokio::time::timeout(opts.response_timeout, client.request(request)).await;
            let resp = match result {
                Ok(Ok(r)) => r,
                failed => {
                    let err = match failed {
                        Ok(Err(e)) => {
                            Error::new(ErrorKind::Unavailable, format!("{} {shown}", req.method))
                                .with_source(e)
                        }
                        _ => Error::new(
                            ErrorKind::Unavailable,
                            format!(
                                "{} {shown}: no response within {:?}",
                                req.method, opts.response_timeout
                            ),
                        ),
                    };
                    if retry + 1 < opts.retry.max_attempts.max(1) {
                        let d = opts.retry.delay(retry, None);
                        tracing::debug!(url = %shown, ?d, "request failed; retrying");
                        retry += 1;
                        tokio::time::sleep(d).await;
                        continue;
                    }
                    return Err(err);
                }
            };
            let status = resp.status();
            if status.is_redirection()
                && let Some(loc) = resp.headers().get(LOCATION)
            {
                redirects += 1;
                if redirects > opts.max_redirects {
                    return Err(Error::new(
                        ErrorKind::Unavailable,
                        format!("too many redirects from {shown}"),
                    ));
                }
                let next = resolve_location(&uri, loc.to_str().unwrap_or(""))
                    .ok_or_else(|| Error::invalid(format!("bad redirect from {shown}")))?;
                // Credentials belong to the host's origin: once a redirect leaves it, they
                // are never sent again for this request, even if a later hop comes back.
                on_origin = on_origin && origin_of(&next) == origin;
                tracing::debug!(from = %shown, to = %redact_url(&next), "following redirect");
                uri = next;
                continue;
            }
            if status == StatusCode::UNAUTHORIZED && on_origin && !auth_round {
                auth_round = true;
                let challenges: Vec<Challenge> = resp
                    .headers()
                    .get_all(http::header::WWW_AUTHENTICATE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(parse_challenges)
                    .collect();
                if sent_auth {
                    // The cached answer went stale (token expiry); get a fresh one once.
                    self.forget_auth(host, req.repo);
                }
                self.authenticate(host, req.repo, &challenges).await?;
                continue;
            }
            if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
                if retry + 1 < opts.retry.max_attempts.max(1) {
                    let after = resp
                        .headers()
                        .get(RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    let d = opts.retry.delay(retry, after);
                    tracing::debug!(url = %shown, %status, ?d, "retrying");
                    retry += 1;
                    tokio::time::sleep(d).await;
                    continue;
                }
                let detail = error_detail(resp, opts.read_timeout).await;
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    format!(
                        "{} {shown}: {status} after {} attempts{detail}",
                        req.method,
                        retry + 1
                    ),
                )
                .with_http_status(status.as_u16()));
            }
            if status.is_success() {
                return Ok(resp);
            }
            let detail = error_detail(resp, opts.read_timeout).await;
            let (kind, what) = match status {
                StatusCode::UNAUTHORIZED if sent_auth => {
                    self.forget_auth(host, req.repo);
                    let who = self
                        .credentials_for(host)
                        .map(|c| format!(" for user {:?}", c.username()))
                        .unwrap_or_default();
                    (
                        ErrorKind::Unauthenticated,
                        format!("{} rejected the credentials{who}", host.authority),
                    )
                }
                StatusCode::UNAUTHORIZED => (
                    ErrorKind::Unauthenticated,
                    format!("{} requires authentication", host.authority),
                ),
                StatusCode::FORBIDDEN => (ErrorKind::PermissionDenied, "access denied".to_owned()),
                StatusCode::NOT_FOUND => (ErrorKind::NotFound, "not found".to_owned()),
                StatusCode::RANGE_NOT_SATISFIABLE => {
                    (ErrorKind::OutOfRange, "range not satisfiable".to_owned())
                }
                s if s.is_redirection() => {
                    (ErrorKind::Unknown, "redirect without Location".to_owned())
                }
                _ => (ErrorKind::Unknown, "unexpected status".to_owned()),
            };
            return Err(Error::new(
                kind,
                format!("{} {shown}: {what} ({status}){detail}", req.method),
            )
            .with_http_status(status.as_u16()));
        }
    }

    /// Answers a 401's challenges for `host`/`repo`, caching the result.
    async fn authenticate(
        &self,
        host: &RegistryHost,
        repo: &str,
        challenges: &[Challenge],
    ) -> Result<()> {
        let creds = self.credentials_for(host);
        if let Some(bearer) = challenges.iter().find(|c| c.scheme == "bearer") {
            let header = self.fetch_token(host, repo, bearer, creds.as_ref()).await?;
            let (header, ttl) = header;
            let mut map = self.inner.auth.lock().unwrap_or_else(|p| p.into_inner());
            map.insert(
                (host.authority.clone(), repo.to_owned()),
                CachedAuth::Bearer {
                    header,
                    expires: Instant::now() + ttl,
                },
            );
            return Ok(());
        }
        if challenges.iter().any(|c| c.scheme == "basic") {
            let creds = creds.ok_or_else(|| {
                Error::new(
                    ErrorKind::Unauthenticated,
                    format!(
                        "{} requires authentication and no credentials are configured for it",
                        host.authority
                    ),
                )
            })?;
            let mut map = self.inner.auth.lock().unwrap_or_else(|p| p.into_inner());
            map.insert(
                (host.authority.clone(), String::new()),
                CachedAuth::Basic(creds.basic_header()),
            );
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::Unauthenticated,
            format!(
                "{} requires authentication with an unsupported scheme",
                host.authority
            ),
        ))
    }

    async fn fetch_token(
        &self,
        host: &RegistryHost,
        repo: &str,
        challenge: &Challenge,
        creds: Option<&Credentials>,
    ) -> Result<(String, Duration)> {
        let opts = &self.inner.opts;
        let realm = challenge.params.get("realm").ok_or_else(|| {
            Error::new(
                ErrorKind::Unauthenticated,
                format!("{}: Bearer challenge without realm", host.authority),
            )
        })?;
        let realm_uri: Uri = realm
            .parse()
            .ok()
            .filter(|u: &Uri| {
                u.scheme().is_some() && u.authority().is_some() && u.query().is_none()
            })
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Unauthenticated,
                    format!("{}: bad token realm", host.authority),
                )
            })?;
        if !realm_allowed(host.scheme, &realm_uri) {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                format!(
                    "{} ({}) names token realm {}, which is not https; refusing to use it",
                    host.authority,
                    host.scheme.as_str(),
                    redact_url(&realm_uri)
                ),
            ));
        }
        let mut query = Vec::new();
        if let Some(s) = challenge.params.get("service") {
            query.push(format!("service={}", form_escape(s)));
        }
        let own_scope = format!("repository:{repo}:pull");
        let scope = challenge.params.get("scope").cloned().unwrap_or(own_scope);
        query.push(format!("scope={}", form_escape(&scope)));
        let url: Uri = format!("{realm}?{}", query.join("&"))
            .parse()
            .map_err(|_| {
                Error::new(
                    ErrorKind::Unauthenticated,
                    format!("{}: bad token realm", host.authority),
                )
            })?;
        let shown = redact_url(&realm_uri);
        let mut b = Request::get(url).header(USER_AGENT, &opts.user_agent);
        if let Some(c) = creds {
            b = b.header(AUTHORIZATION, c.basic_header());
        }
        let request = b
            .body(Full::new(Bytes::new()))
            .map_err(|e| Error::invalid("build token request").with_source(e))?;
        let client = self.http_client(host)?;
        let resp = tokio::time::timeout(opts.response_timeout, client.request(request))
            .await
            .map_err(|_| {
                Error::new(
                    ErrorKind::Unavailable,
                    format!("token request to {shown} timed out"),
                )
            })?
            .map_err(|e| {
                Error::new(ErrorKind::Unavailable, format!("token request to {shown}"))
                    .with_source(e)
            })?;
        let status = resp.status();
        if !status.is_success() {
            let who = creds
                .map(|c| format!(" for user {:?}", c.username()))
                .unwrap_or_default();
            let kind = match status {
                StatusCode::UNAUTHORIZED => ErrorKind::Unauthenticated,
                StatusCode::FORBIDDEN => ErrorKind::PermissionDenied,
                _ => ErrorKind::Unavailable,
            };
            return Err(Error::new(
                kind,
                format!("token server {shown} refused a token{who} ({status})"),
            )
            .with_http_status(status.as_u16()));
        }
        let body = read_capped(
            resp,
            TOKEN_RESPONSE_MAX,
            opts.read_timeout,
            "token response",
        )
        .await?;
        let tr: TokenResponse = serde_json::from_slice(&body).map_err(|_| {
            Error::new(
                ErrorKind::Unauthenticated,
                format!("token server {shown} sent a malformed response"),
            )
        })?;
        let token = tr
            .token
            .or(tr.access_token)
            .filter(|t| {
                !t.is_empty() && http::HeaderValue::from_str(&format!("Bearer {t}")).is_ok()
            })
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Unauthenticated,
                    format!("token server {shown} sent no usable token"),
                )
            })?;
        // Docker's token spec: 60 s when absent; renew a little early.
        let ttl = Duration::from_secs(tr.expires_in.unwrap_or(60).clamp(10, 24 * 3600) - 5);
        Ok((format!("Bearer {token}"), ttl))
    }
}

/// Reads a whole body, refusing more than `cap` bytes (reads at most `cap + 1`).
pub(crate) async fn read_capped(
    resp: Response<Incoming>,
    cap: u64,
    idle: Duration,
    what: &str,
) -> Result<Bytes> {
    let too_big = || {
        Error::new(
            ErrorKind::ResourceExhausted,
            format!("{what} is larger than {cap} bytes"),
        )
    };
    if let Some(len) = resp
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > cap
    {
        return Err(too_big());
    }
    let mut body = resp.into_body();
    let mut buf = BytesMut::new();
    loop {
        let frame = tokio::time::timeout(idle, body.frame())
            .await
            .map_err(|_| Error::new(ErrorKind::Unavailable, format!("{what}: read timed out")))?;
        match frame {
            None => break,
            Some(Err(e)) => {
                return Err(
                    Error::new(ErrorKind::Unavailable, format!("read {what}")).with_source(e)
                );
            }
            Some(Ok(f)) => {
                if let Ok(data) = f.into_data() {
                    if buf.len() as u64 + data.len() as u64 > cap {
                        return Err(too_big());
                    }
                    buf.extend_from_slice(&data);
                }
            }
        }
    }
    Ok(buf.freeze())
}

/// `: CODE: message` from a registry's JSON error body, sanitised and short.
async fn error_detail(resp: Response<Incoming>, idle: Duration) -> String {
    let Ok(body) = read_capped(
        resp,
        ERROR_BODY_MAX,
        idle.min(Duration::from_secs(5)),
        "error body",
    )
    .await
    else {
        return String::new();
    };
    #[derive(serde::Deserialize)]
    struct Errs {
        errors: Vec<E>,
    }
    #[derive(serde::Deserialize)]
    struct E {
        code: Option<String>,
        message: Option<String>,
    }
    let Ok(errs) = serde_json::from_slice::<Errs>(&body) else {
        return String::new();
    };
    let Some(e) = errs.errors.first() else {
        return String::new();
    };
    let text = format!(
        "{}: {}",
        e.code.as_deref().unwrap_or("?"),
        e.message.as_deref().unwrap_or("")
    );
    let clean: String = text.chars().filter(|c| !c.is_control()).take(200).collect();
    format!(": {clean}")
}

fn origin_of(u: &Uri) -> (Option<String>, Option<String>, u16) {
    let scheme = u.scheme_str().map(str::to_ascii_lowercase);
    let port = u
        .port_u16()
        .unwrap_or(if scheme.as_deref() == Some("https") {
            443
        } else {
            80
        });
    (scheme, u.host().map(str::to_ascii_lowercase), port)
}

/// Resolves a `Location` header against the request URL (absolute, or absolute-path).
pub(crate) fn resolve_location(base: &Uri, loc: &str) -> Option<Uri> {
    let loc = loc.trim();
    if loc.starts_with("http://") || loc.starts_with("https://") {
        return loc.parse().ok();
    }
    if loc.starts_with('/') && !loc.starts_with("//") {
        let mut parts = base.clone().into_parts();
        parts.path_and_query = Some(loc.parse().ok()?);
        return Uri::from_parts(parts).ok();
    }
    None
}

fn tls_config(host: &RegistryHost) -> Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::new(ErrorKind::Internal, "TLS setup").with_source(e))?;
    if host.skip_verify {
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth());
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(native_roots().iter().cloned());
    for path in &host.ca {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let certs = CertificateDer::pem_file_iter(path).map_err(|e| {
            Error::invalid(format!("read CA file {}", path.display())).with_source(e)
        })?;
        for c in certs {
            let c = c.map_err(|e| {
                Error::invalid(format!("parse CA file {}", path.display())).with_source(e)
            })?;
            roots.add(c).map_err(|e| {
                Error::invalid(format!("CA file {}", path.display())).with_source(e)
            })?;
        }
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

fn native_roots() -> &'static Vec<rustls::pki_types::TrustAnchor<'static>> {
    static ROOTS: OnceLock<Vec<rustls::pki_types::TrustAnchor<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        let mut store = rustls::RootCertStore::empty();
        let (added, ignored) = store.add_parsable_certificates(found.certs);
        tracing::debug!(
            added,
            ignored,
            errors = found.errors.len(),
            "loaded system CA certificates"
        );
        store.roots
    })
}

/// `skip_verify`: accepts any certificate but still checks the handshake signatures.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Errors from trying a registry's hosts in turn: the first error that is not a
/// `NotFound` wins (it says most about why the pull failed), as in containerd.
#[derive(Default)]
pub(crate) struct HostErrors {
    first: Option<Error>,
    not_found: Option<Error>,
}

impl HostErrors {
    pub(crate) fn push(&mut self, host: &RegistryHost, err: Error) {
        tracing::info!(host = %host.authority, error = %err, "trying next host");
        if err.is(ErrorKind::NotFound) {
            self.not_found.get_or_insert(err);
        } else {
            self.first.get_or_insert(err);
        }
    }

    pub(crate) fn finish(self, what: &str) -> Error {
        match self.first.or(self.not_found) {
            Some(e) => e.context(what.to_owned()),
            None => Error::new(ErrorKind::Unavailable, format!("{what}: no host to try")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded() {
        let p = RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        };
        assert_eq!(p.delay(0, None), Duration::from_millis(100));
        assert_eq!(p.delay(2, None), Duration::from_millis(400));
        assert_eq!(p.delay(40, None), Duration::from_secs(1));
        assert_eq!(
            p.delay(0, Some(Duration::from_secs(3600))),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn redirect_resolution_and_origins() {
        let base: Uri = "http://127.0.0.1:5000/v2/a/blobs/x".parse().unwrap();
        let abs = resolve_location(&base, "http://127.0.0.2:9/s?sig=1").unwrap();
        assert_ne!(origin_of(&abs), origin_of(&base));
        let rel = resolve_location(&base, "/other/path?q").unwrap();
        assert_eq!(rel.to_string(), "http://127.0.0.1:5000/other/path?q");
        assert_eq!(origin_of(&rel), origin_of(&base));
        assert!(resolve_location(&base, "//evil.example/x").is_none());
        assert!(resolve_location(&base, "ftp://x/y").is_none());
        let https: Uri = "https://h/x".parse().unwrap();
        let https443: Uri = "https://H:443/y".parse().unwrap();
        assert_eq!(origin_of(&https), origin_of(&https443));
    }

    #[test]
    fn credentials_stay_with_their_host() {
        let mut cfg = DockerConfig::default();
        cfg.insert("mirror.example", Credentials::new("m", "mp"));
        let c = RegistryClient::new(ClientOptions {
            user: Some(Credentials::new("u", "up")),
            docker_config: cfg,
            ..ClientOptions::default()
        });
        let mut upstream = crate::hosts::default_host("registry.example", &HostOptions::default());
        assert_eq!(c.credentials_for(&upstream).unwrap().username(), "u");
        upstream.is_upstream = false;
        assert!(
            c.credentials_for(&upstream).is_none(),
            "--user must not reach a mirror"
        );
        upstream.authority = "mirror.example".into();
        assert_eq!(c.credentials_for(&upstream).unwrap().username(), "m");
    }
}
