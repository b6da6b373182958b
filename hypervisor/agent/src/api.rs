//! The REST API (schema: `hypervisor/agent/openapi.yaml`) on a Unix socket, for root
//! and the configured operator group (SO_PEERCRED). Every error is a JSON body
//! `{"error": {"field", "message"}}` with a 4xx/5xx status.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{MatchedPath, Path as UrlPath, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

use crate::agent::Agent;
use crate::error::{Error, Kind};
use crate::lifecycle::CreateVm;
use crate::model::{DeviceState, Tenant};

/// The peer of a connection: a Unix socket peer's credentials, or the SHA-256 of the
/// client certificate a TLS connection verified.
#[derive(Debug, Clone)]
pub struct Peer {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub tls_client: Option<String>,
}

impl Connected<axum::serve::IncomingStream<'_, tokio::net::UnixListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::UnixListener>) -> Self {
        match stream.io().peer_cred() {
            Ok(c) => Peer {
                uid: Some(c.uid()),
                gid: Some(c.gid()),
                tls_client: None,
            },
            Err(_) => Peer {
                uid: None,
                gid: None,
                tls_client: None,
            },
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (
            status,
            Json(json!({ "error": { "field": self.field, "message": self.message } })),
        )
            .into_response()
    }
}

type ApiResult = Result<Response, Error>;

/// Parses a JSON body, naming the offending field.
fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, Error> {
    if body.is_empty() {
        return Err(Error::bad("body", "a JSON body is required"));
    }
    crate::error::parse_json(body)
}

fn ok(v: impl serde::Serialize) -> ApiResult {
    Ok(Json(v).into_response())
}

#[derive(Clone, Debug)]
struct App {
    agent: Arc<Agent>,
}

async fn authorize(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    req: Request,
    next: Next,
) -> Response {
    // A TLS peer's client certificate was verified against the operators' CA.
    let allowed = peer.tls_client.is_some()
        || peer.uid == Some(0)
        || (app.agent.cfg.operator_gid.is_some() && peer.gid == app.agent.cfg.operator_gid);
    if !allowed {
        return Error::new(
            Kind::Forbidden,
            "peer",
            format!(
                "uid {:?} gid {:?} may not use bulwarkd: root or the operator group only",
                peer.uid, peer.gid
            ),
        )
        .into_response();
    }
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched".to_string(), |m| m.as_str().to_string());
    let t0 = Instant::now();
    let resp = next.run(req).await;
    app.agent
        .metrics
        .api_request(&method, &route, resp.status().as_u16(), t0.elapsed());
    resp
}

async fn health() -> ApiResult {
    ok(json!({ "status": "ready" }))
}

async fn metrics(State(app): State<App>) -> ApiResult {
    let st = app.agent.state().await?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.agent.metrics.render(&st),
    )
        .into_response())
}

async fn node(State(app): State<App>) -> ApiResult {
    let st = app.agent.state().await?;
    let (schema, _) = app.agent.store.schema()?;
    let mut by_state = serde_json::Map::new();
    for s in DeviceState::ALL {
        by_state.insert(
            s.name().into(),
            st.devices.values().filter(|d| d.state == s).count().into(),
        );
    }
    let clean = !st.devices.values().any(|d| {
        matches!(
            d.state,
            DeviceState::Sanitizing
                | DeviceState::Quarantined
                | DeviceState::Assigned
                | DeviceState::InUse
        )
    });
    ok(json!({
        "owner": st.tenancy.owner,
        "clean": clean,
        "devices_by_state": by_state,
        "vms": st.vms.len(),
        "scrubs_running": app.agent.scrubs_running(),
        "schema_version": schema,
        "invariant_violations": crate::lifecycle::invariant_violations(&st),
    }))
}

#[derive(Debug, Deserialize)]
struct Since {
    #[serde(default)]
    since: u64,
    /// With no event after `since` yet: how long to wait for one (a blocking query).
    #[serde(default)]
    wait_ms: u64,
}

/// The longest a blocking `GET /events` waits.
pub const EVENTS_MAX_WAIT_MS: u64 = 60_000;

async fn events(State(app): State<App>, Query(q): Query<Since>) -> ApiResult {
    if q.wait_ms > EVENTS_MAX_WAIT_MS {
        return Err(Error::bad(
            "wait_ms",
            format!("at most {EVENTS_MAX_WAIT_MS} ms, not {}", q.wait_ms),
        ));
    }
    ok(app
        .agent
        .wait_events(q.since, std::time::Duration::from_millis(q.wait_ms))
        .await)
}

async fn devices(State(app): State<App>) -> ApiResult {
    ok(app
        .agent
        .state()
        .await?
        .devices
        .into_values()
        .collect::<Vec<_>>())
}

async fn rescan(State(app): State<App>) -> ApiResult {
    let n = app.agent.rescan().await?;
    ok(json!({ "devices": n }))
}

async fn device(State(app): State<App>, UrlPath(addr): UrlPath<String>) -> ApiResult {
    let st = app.agent.state().await?;
    match st.devices.get(&addr) {
        Some(d) => ok(d),
        None => Err(Error::not_found("address", format!("no device {addr}"))),
    }
}

async fn enroll(State(app): State<App>, UrlPath(addr): UrlPath<String>) -> ApiResult {
    app.agent.enroll(&addr).await?;
    device(State(app), UrlPath(addr)).await
}

async fn unenroll(State(app): State<App>, UrlPath(addr): UrlPath<String>) -> ApiResult {
    let drivers = app.agent.unenroll(&addr).await?;
    ok(json!({
        "address": addr,
        "state": "unenrolled",
        "members": drivers
            .iter()
            .map(|(m, d)| json!({ "address": m, "driver": d }))
            .collect::<Vec<_>>(),
    }))
}

async fn release(State(app): State<App>, UrlPath(addr): UrlPath<String>) -> ApiResult {
    app.agent.release(&addr).await?;
    device(State(app), UrlPath(addr)).await
}

async fn device_scrubs(State(app): State<App>, UrlPath(addr): UrlPath<String>) -> ApiResult {
    let st = app.agent.state().await?;
    if !st.devices.contains_key(&addr) {
        return Err(Error::not_found("address", format!("no device {addr}")));
    }
    let store = Arc::clone(&app.agent.store);
    let recs = tokio::task::spawn_blocking(move || store.scrubs(Some(&addr)))
        .await
        .map_err(|e| Error::internal("storage", e.to_string()))??;
    ok(recs)
}

async fn tenants(State(app): State<App>) -> ApiResult {
    ok(app
        .agent
        .state()
        .await?
        .tenants
        .into_values()
        .collect::<Vec<_>>())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTenant {
    id: String,
    signer_keys: Vec<String>,
    #[serde(default)]
    min_version: u64,
}

async fn create_tenant(State(app): State<App>, body: Bytes) -> ApiResult {
    let t: NewTenant = parse(&body)?;
    let t = Tenant {
        id: t.id,
        signer_keys: t.signer_keys,
        min_version: t.min_version,
    };
    let out = t.clone();
    app.agent.create_tenant(t).await?;
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

async fn tenant(State(app): State<App>, UrlPath(id): UrlPath<String>) -> ApiResult {
    match app.agent.state().await?.tenants.get(&id) {
        Some(t) => ok(t),
        None => Err(Error::not_found("id", format!("no tenant {id}"))),
    }
}

async fn delete_tenant(State(app): State<App>, UrlPath(id): UrlPath<String>) -> ApiResult {
    app.agent.delete_tenant(&id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn images(State(app): State<App>) -> ApiResult {
    let dir = app.agent.state_dir.clone();
    let list = tokio::task::spawn_blocking(move || crate::images::list(&dir))
        .await
        .map_err(|e| Error::internal("storage", e.to_string()))??;
    ok(list)
}

async fn upload_image(
    State(app): State<App>,
    UrlPath(name): UrlPath<String>,
    body: axum::body::Body,
) -> ApiResult {
    let info = app.agent.upload_image(&name, body).await?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

async fn delete_image(State(app): State<App>, UrlPath(name): UrlPath<String>) -> ApiResult {
    app.agent.delete_image(&name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn vms(State(app): State<App>) -> ApiResult {
    ok(app
        .agent
        .state()
        .await?
        .vms
        .into_values()
        .collect::<Vec<_>>())
}

async fn create_vm(State(app): State<App>, body: Bytes) -> ApiResult {
    let req: CreateVm = parse(&body)?;
    let vm = app.agent.create_vm(req).await?;
    Ok((StatusCode::CREATED, Json(vm)).into_response())
}

async fn vm(State(app): State<App>, UrlPath(id): UrlPath<String>) -> ApiResult {
    match app.agent.state().await?.vms.get(&id) {
        Some(v) => ok(v),
        None => Err(Error::not_found("id", format!("no VM {id}"))),
    }
}

async fn vmm_config(State(app): State<App>, UrlPath(id): UrlPath<String>) -> ApiResult {
    ok(app.agent.vmm_config_of(&id).await?)
}

async fn guest(State(app): State<App>, UrlPath(id): UrlPath<String>) -> ApiResult {
    if !app.agent.state().await?.vms.contains_key(&id) {
        return Err(Error::not_found("id", format!("no VM {id}")));
    }
    ok(app.agent.guest_view(&id))
}

async fn delete_vm(State(app): State<App>, UrlPath(id): UrlPath<String>) -> ApiResult {
    app.agent.delete_vm(&id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn start_vm(State(app): State<App>, UrlPath(id): UrlPath<String>) -> ApiResult {
    ok(app.agent.start_vm(&id).await?)
}

async fn stop_vm(State(app): State<App>, UrlPath(id): UrlPath<String>) -> ApiResult {
    ok(app.agent.stop_vm(&id).await?)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AttestReq {
    nonce: String,
}

async fn attest(State(app): State<App>, UrlPath(id): UrlPath<String>, body: Bytes) -> ApiResult {
    let r: AttestReq = parse(&body)?;
    let doc = app.agent.attest(&id, &r.nonce).await?;
    Ok(([(header::CONTENT_TYPE, "application/cose")], doc).into_response())
}

/// 404 unless VM `id` exists.
async fn known_vm(app: &App, id: &str) -> Result<(), Error> {
    if app.agent.state().await?.vms.contains_key(id) {
        Ok(())
    } else {
        Err(Error::not_found("id", format!("no VM {id}")))
    }
}

async fn guest_ping(State(app): State<App>, UrlPath(id): UrlPath<String>) -> ApiResult {
    known_vm(&app, &id).await?;
    let rtt = app
        .agent
        .guest_request(&id, |reply| crate::guest::HostRequest::Ping { reply })
        .await?;
    ok(serde_json::json!({ "round_trip_us": rtt.as_micros() as u64 }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChallengeReq {
    /// Hex, 16 to 64 bytes.
    nonce: String,
}

async fn guest_challenge(
    State(app): State<App>,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> ApiResult {
    let r: ChallengeReq = parse(&body)?;
    let nonce = hex::decode(&r.nonce)
        .ok()
        .filter(|n| (16..=64).contains(&n.len()))
        .ok_or_else(|| Error::new(Kind::BadRequest, "nonce", "must be 16 to 64 bytes of hex"))?;
    known_vm(&app, &id).await?;
    let answer = app
        .agent
        .guest_request(&id, |reply| crate::guest::HostRequest::Challenge {
            nonce,
            reply,
        })
        .await?;
    ok(answer)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShutdownReq {
    #[serde(default)]
    reason: Option<String>,
}

async fn guest_shutdown(
    State(app): State<App>,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> ApiResult {
    let r: ShutdownReq = if body.is_empty() {
        ShutdownReq { reason: None }
    } else {
        parse(&body)?
    };
    let reason = r.reason.unwrap_or_else(|| "operator request".into());
    if reason.len() > bulwark_guest_protocol::MAX_TEXT {
        return Err(Error::new(
            Kind::BadRequest,
            "reason",
            format!("over {} bytes", bulwark_guest_protocol::MAX_TEXT),
        ));
    }
    known_vm(&app, &id).await?;
    app.agent
        .guest_request(&id, |reply| crate::guest::HostRequest::Shutdown {
            reason,
            reply,
        })
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "sent": "shutdown" })),
    )
        .into_response())
}

async fn update_node(State(app): State<App>, body: axum::body::Body) -> ApiResult {
    ok(app.agent.update_node(body).await?)
}

async fn node_boot(State(app): State<App>) -> ApiResult {
    ok(app.agent.node_boot_state().await?)
}

async fn fallback() -> Error {
    Error::not_found("path", "no such endpoint")
}

/// The router (every `.route` here is listed in openapi.yaml; a test checks it).
pub fn router(agent: Arc<Agent>) -> Router {
    let app = App { agent };
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/node", get(node))
        .route("/node/image", put(update_node))
        .route("/node/boot", get(node_boot))
        .route("/events", get(events))
        .route("/devices", get(devices))
        .route("/devices/rescan", post(rescan))
        .route("/devices/{addr}", get(device))
        .route("/devices/{addr}/enroll", post(enroll))
        .route("/devices/{addr}/release", post(release))
        .route("/devices/{addr}/unenroll", post(unenroll))
        .route("/devices/{addr}/scrubs", get(device_scrubs))
        .route("/tenants", get(tenants).post(create_tenant))
        .route("/tenants/{id}", get(tenant).delete(delete_tenant))
        .route("/images", get(images))
        .route("/images/{name}", put(upload_image).delete(delete_image))
        .route("/vms", get(vms).post(create_vm))
        .route("/vms/{id}", get(vm).delete(delete_vm))
        .route("/vms/{id}/start", post(start_vm))
        .route("/vms/{id}/stop", post(stop_vm))
        .route("/vms/{id}/attest", post(attest))
        .route("/vms/{id}/vmm-config", get(vmm_config))
        .route("/vms/{id}/guest", get(guest))
        .route("/vms/{id}/guest/ping", post(guest_ping))
        .route("/vms/{id}/guest/challenge", post(guest_challenge))
        .route("/vms/{id}/guest/shutdown", post(guest_shutdown))
        .fallback(fallback)
        .method_not_allowed_fallback(|| async {
            Error::new(Kind::BadRequest, "method", "method not allowed here").into_response()
        })
        .layer(axum::middleware::from_fn_with_state(app.clone(), authorize))
        .with_state(app)
}

/// Binds `sock` (a stale socket from a killed bulwarkd is replaced; a live one is an
/// error), owned by the operator group, mode 0660.
pub fn bind(sock: &Path, operator_gid: Option<u32>) -> Result<tokio::net::UnixListener, Error> {
    if sock.exists() {
        if std::os::unix::net::UnixStream::connect(sock).is_ok() {
            return Err(Error::conflict(
                "api_sock",
                format!("{} is in use: another bulwarkd is running", sock.display()),
            ));
        }
        std::fs::remove_file(sock).map_err(|e| {
            Error::internal(
                "api_sock",
                format!("removing stale {}: {e}", sock.display()),
            )
        })?;
    }
    if let Some(dir) = sock.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::internal("api_sock", format!("creating {}: {e}", dir.display())))?;
    }
    let l = tokio::net::UnixListener::bind(sock)
        .map_err(|e| Error::internal("api_sock", format!("binding {}: {e}", sock.display())))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(sock, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| Error::internal("api_sock", e.to_string()))?;
    if let Some(g) = operator_gid {
        std::os::unix::fs::chown(sock, None, Some(g))
            .map_err(|e| Error::internal("api_sock", format!("chown to gid {g}: {e}")))?;
    }
    Ok(l)
}

/// Serves until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::UnixListener,
    agent: Arc<Agent>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(agent).into_make_service_with_connect_info::<Peer>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    /// Every route the router serves is described in openapi.yaml, and vice versa.
    #[test]
    fn openapi_file_lists_exactly_the_served_paths() {
        let spec = include_str!("../openapi.yaml");
        let mut documented: Vec<&str> = spec
            .lines()
            .filter_map(|l| l.strip_prefix("  /").and_then(|p| p.strip_suffix(':')))
            .collect();
        let source = include_str!("api.rs");
        let mut served: Vec<&str> = source
            .lines()
            .filter_map(|l| l.trim().strip_prefix(".route(\"/"))
            .filter_map(|l| l.split('"').next())
            .collect();
        assert!(served.len() > 10);
        documented.sort_unstable();
        served.sort_unstable();
        assert_eq!(documented, served);
    }

    /// And each documented path lists exactly the methods served.
    #[test]
    fn openapi_methods_match_the_router() {
        let spec = include_str!("../openapi.yaml");
        let mut documented = Vec::new();
        let mut path = "";
        for l in spec.lines() {
            if let Some(p) = l.strip_prefix("  /").and_then(|p| p.strip_suffix(':')) {
                path = p;
            } else if let Some(m) = l.strip_prefix("    ").and_then(|m| m.strip_suffix(':')) {
                if ["get", "post", "put", "delete"].contains(&m) && !path.is_empty() {
                    documented.push(format!("{m} /{path}"));
                }
            } else if !l.starts_with(' ') {
                path = "";
            }
        }
        let source = include_str!("api.rs");
        let mut served = Vec::new();
        for l in source
            .lines()
            .filter_map(|l| l.trim().strip_prefix(".route(\"/"))
        {
            let (p, rest) = l.split_once('"').unwrap();
            for m in ["get", "post", "put", "delete"] {
                if rest.contains(&format!(" {m}(")) || rest.contains(&format!(".{m}(")) {
                    served.push(format!("{m} /{p}"));
                }
            }
        }
        documented.sort();
        served.sort();
        assert_eq!(documented, served);
    }
}
