//! What the controller serves over HTTP: each fleet's device API and TUF files under
//! `/fleets/<namespace>/<name>/`, and the controller's own health and metrics endpoints.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use tower::ServiceExt;

use super::metrics::Metrics;

/// The device API routers of the fleets whose engines run on this replica.
#[derive(Debug, Clone, Default)]
pub struct FleetRoutes(Arc<RwLock<HashMap<String, Router>>>);

impl FleetRoutes {
    /// Serves `router` under `/fleets/<namespace>/<name>/`.
    pub fn insert(&self, namespace: &str, name: &str, router: Router) {
        self.0.write().expect("routes").insert(format!("{namespace}/{name}"), router);
    }

    /// Stops serving a fleet.
    pub fn remove(&self, namespace: &str, name: &str) {
        self.0.write().expect("routes").remove(&format!("{namespace}/{name}"));
    }

    fn get(&self, namespace: &str, name: &str) -> Option<Router> {
        self.0.read().expect("routes").get(&format!("{namespace}/{name}")).cloned()
    }
}

/// The device API and TUF files of every fleet: `/fleets/<namespace>/<name>/v1/...` and
/// `/fleets/<namespace>/<name>/tuf/...`.
pub fn device_router(routes: FleetRoutes) -> Router {
    Router::new().route("/fleets/{namespace}/{name}/{*rest}", any(forward)).with_state(routes)
}

async fn forward(
    State(routes): State<FleetRoutes>,
    Path((namespace, name, rest)): Path<(String, String, String)>,
    request: Request,
) -> Response {
    let Some(router) = routes.get(&namespace, &name) else {
        return (StatusCode::NOT_FOUND, format!("fleet {namespace}/{name} is not served by this replica"))
            .into_response();
    };
    let path = match request.uri().query() {
        Some(query) => format!("/{rest}?{query}"),
        None => format!("/{rest}"),
    };
    let Ok(uri) = path.parse() else {
        return (StatusCode::BAD_REQUEST, "invalid path").into_response();
    };
    // A fresh request, not the outer one with its URI replaced: axum keeps a route's path
    // parameters in the request's extensions and appends an inner route's to them, so the
    // fleet's routes would see this route's three parameters before their own.
    let (parts, body) = request.into_parts();
    let mut inner = Request::new(body);
    *inner.method_mut() = parts.method;
    *inner.uri_mut() = uri;
    *inner.version_mut() = parts.version;
    *inner.headers_mut() = parts.headers;
    match router.oneshot(inner).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// `GET /healthz` (the process runs), `GET /readyz` (it reaches the API server) and
/// `GET /metrics`.
pub fn health_router(metrics: Arc<Metrics>, ready: Arc<std::sync::atomic::AtomicBool>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.load(std::sync::atomic::Ordering::Relaxed);
                async move {
                    if ready {
                        (StatusCode::OK, "ready")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not connected to the API server yet")
                    }
                }
            }),
        )
        .route("/metrics", get(move || async move { metrics.encode() }))
}
