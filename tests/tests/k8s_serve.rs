//! What the in-cluster controller serves: health, readiness and metrics, and each fleet's
//! device API and TUF files under `/fleets/<namespace>/<name>/`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::Path;
use axum::http::{Request, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use tower::ServiceExt;
use waveguide::k8s::metrics::Metrics;
use waveguide::k8s::serve::{device_router, health_router, FleetRoutes};

async fn get_text(router: &Router, path: &str) -> (StatusCode, String) {
    let response = router.clone().oneshot(Request::get(path).body(Body::empty()).unwrap()).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let router = health_router(metrics.clone(), ready.clone());
    assert_eq!(get_text(&router, "/healthz").await.0, StatusCode::OK);
    assert_eq!(get_text(&router, "/readyz").await.0, StatusCode::SERVICE_UNAVAILABLE);
    ready.store(true, Ordering::Relaxed);
    assert_eq!(get_text(&router, "/readyz").await.0, StatusCode::OK);
    metrics.reconciled(std::time::Duration::from_millis(20), true);
    metrics.reconciled(std::time::Duration::from_millis(20), false);
    let (status, text) = get_text(&router, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(text.contains(r#"waveguide_controller_reconciliations_total{result="success"} 1"#), "{text}");
    assert!(text.contains(r#"waveguide_controller_reconciliations_total{result="error"} 1"#), "{text}");
    assert!(text.contains("waveguide_controller_reconcile_duration_seconds_count 2"), "{text}");
}

#[tokio::test]
async fn each_fleet_is_served_under_its_own_prefix() {
    let routes = FleetRoutes::default();
    let router = device_router(routes.clone());
    let fleet = Router::new()
        .route("/tuf/metadata/timestamp.json", get(|| async { "timestamp of edge" }))
        .route("/v1/echo", get(|query: axum::extract::RawQuery| async move { query.0.unwrap_or_default() }))
        // A route with its own path parameter, as the device reports have.
        .route(
            "/v1/devices/{id}/reports",
            post(|Path(id): Path<String>, body: String| async move { format!("{id}: {body}") }),
        );
    routes.insert("fleets", "edge", fleet);

    assert_eq!(
        get_text(&router, "/fleets/fleets/edge/tuf/metadata/timestamp.json").await,
        (StatusCode::OK, "timestamp of edge".into())
    );
    assert_eq!(get_text(&router, "/fleets/fleets/edge/v1/echo?device=a").await.1, "device=a");
    // The fleet's route sees its own parameter, not the outer route's three.
    let report =
        Request::post("/fleets/fleets/edge/v1/devices/pos-1/reports").body(Body::from("{}")).unwrap();
    let response = router.clone().oneshot(report).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
    assert_eq!(bytes, "pos-1: {}");
    let (status, text) = get_text(&router, "/fleets/fleets/other/tuf/metadata/timestamp.json").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(text.contains("fleets/other"), "{text}");

    routes.remove("fleets", "edge");
    assert_eq!(get_text(&router, "/fleets/fleets/edge/v1/echo").await.0, StatusCode::NOT_FOUND);
}
