//! `POST /v1/hooks/git`: the receiver for GitHub and GitLab push events.
//!
//! A push event only says "something changed": it wakes the source loop, which then fetches
//! and decides from the repository itself (the payload is not trusted for the commit id,
//! and a lost or repeated event does no harm). The request must prove it knows the shared
//! secret: GitHub signs the body (`X-Hub-Signature-256: sha256=HMAC-SHA256(secret, body)`),
//! GitLab sends the secret itself (`X-Gitlab-Token`). Anything else gets 401 and wakes
//! nothing.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use super::SourceError;
use crate::api::ApiError;

/// The path the receiver is served at.
pub const PATH: &str = "/v1/hooks/git";

/// The webhook receiver's settings: the shared secret and what to wake.
#[derive(Clone)]
pub struct Webhook {
    secret: Arc<[u8]>,
    wake: Arc<Notify>,
}

impl Webhook {
    /// A receiver that checks requests against `secret` (the "Secret" of a GitHub webhook,
    /// the "Secret token" of a GitLab one) and notifies `wake` on push events. An empty
    /// secret is refused: anyone could compute its signatures.
    pub fn new(secret: impl Into<Vec<u8>>, wake: Arc<Notify>) -> Result<Webhook, SourceError> {
        let secret = secret.into();
        if secret.is_empty() {
            return Err(SourceError::EmptyWebhookSecret);
        }
        Ok(Webhook { secret: secret.into(), wake })
    }

    /// A router serving `POST /v1/hooks/git`, to merge into the API's router.
    pub fn router<S: Clone + Send + Sync + 'static>(self) -> Router<S> {
        Router::new().route(PATH, post(receive)).with_state(self)
    }

    /// Checks the request's proof of the secret and names the event it carries.
    fn authenticate<'h>(&self, headers: &'h HeaderMap, body: &[u8]) -> Result<Event<'h>, ApiError> {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        if let Some(signature) = header("x-hub-signature-256") {
            let signature = signature
                .strip_prefix("sha256=")
                .and_then(|hex_digits| hex::decode(hex_digits).ok())
                .ok_or_else(|| ApiError::Unauthorized("malformed X-Hub-Signature-256".into()))?;
            let mut mac =
                Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC takes keys of any length");
            mac.update(body);
            // Constant-time comparison.
            mac.verify_slice(&signature)
                .map_err(|_| ApiError::Unauthorized("X-Hub-Signature-256 does not match the body".into()))?;
            return Ok(Event::GitHub(header("x-github-event").unwrap_or("")));
        }
        if let Some(token) = header("x-gitlab-token") {
            // Comparing digests keeps the time taken independent of where the token and
            // the secret first differ.
            if Sha256::digest(token.as_bytes()) != Sha256::digest(&self.secret) {
                return Err(ApiError::Unauthorized("X-Gitlab-Token is wrong".into()));
            }
            return Ok(Event::GitLab(header("x-gitlab-event").unwrap_or("")));
        }
        Err(ApiError::Unauthorized("neither X-Hub-Signature-256 nor X-Gitlab-Token is present".into()))
    }
}

/// The event an authenticated request carries.
enum Event<'h> {
    GitHub(&'h str),
    GitLab(&'h str),
}

impl Event<'_> {
    /// Whether the event may have moved the followed branch or tag.
    fn is_push(&self) -> bool {
        match self {
            Event::GitHub(name) => matches!(*name, "push" | "create"),
            Event::GitLab(name) => matches!(*name, "Push Hook" | "Tag Push Hook"),
        }
    }

    fn name(&self) -> &str {
        match self {
            Event::GitHub(name) | Event::GitLab(name) => name,
        }
    }
}

/// Handles one delivery: 202 and a wake-up for push events, 200 for other authenticated
/// events (GitHub's `ping` when the hook is created), 401 otherwise.
async fn receive(
    State(webhook): State<Webhook>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let event = webhook.authenticate(&headers, &body)?;
    if event.is_push() {
        // `notify_one` keeps a permit when the loop is busy fetching, so a push during a
        // fetch still causes one more pass.
        webhook.wake.notify_one();
        return Ok((
            StatusCode::ACCEPTED,
            Json(serde_json::json!({"triggered": true, "event": event.name()})),
        ));
    }
    Ok((StatusCode::OK, Json(serde_json::json!({"triggered": false, "event": event.name()}))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use std::time::Duration;
    use tower::ServiceExt;

    const SECRET: &str = "It's a Secret to Everybody";

    /// GitHub's documented example: this body and secret give this signature.
    const GITHUB_BODY: &str = "Hello, World!";
    const GITHUB_SIGNATURE: &str = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    async fn deliver(headers: &[(&str, &str)], body: &str) -> (StatusCode, serde_json::Value, bool) {
        let wake = Arc::new(Notify::new());
        let router: Router = Webhook::new(SECRET, wake.clone()).unwrap().router();
        let mut request = Request::post(PATH);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = router.oneshot(request.body(Body::from(body.to_owned())).unwrap()).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        let woken = tokio::time::timeout(Duration::from_millis(10), wake.notified()).await.is_ok();
        (status, serde_json::from_slice(&bytes).unwrap(), woken)
    }

    #[tokio::test]
    async fn github_push_with_a_good_signature_wakes_the_source() {
        let headers = [("X-Hub-Signature-256", GITHUB_SIGNATURE), ("X-GitHub-Event", "push")];
        let (status, body, woken) = deliver(&headers, GITHUB_BODY).await;
        assert_eq!((status, woken), (StatusCode::ACCEPTED, true), "{body}");
        let headers = [("X-Hub-Signature-256", GITHUB_SIGNATURE), ("X-GitHub-Event", "ping")];
        let (status, _, woken) = deliver(&headers, GITHUB_BODY).await;
        assert_eq!((status, woken), (StatusCode::OK, false));
    }

    #[tokio::test]
    async fn bad_signatures_and_tokens_get_401_and_wake_nothing() {
        let cases: [&[(&str, &str)]; 5] = [
            &[("X-Hub-Signature-256", GITHUB_SIGNATURE), ("X-GitHub-Event", "push")],
            &[("X-Hub-Signature-256", "sha1=abc"), ("X-GitHub-Event", "push")],
            &[("X-Gitlab-Token", "guess"), ("X-Gitlab-Event", "Push Hook")],
            &[("X-GitHub-Event", "push")],
            &[],
        ];
        for headers in cases {
            // The first case signs another body than the one sent.
            let (status, body, woken) = deliver(headers, "Hello, World?").await;
            assert_eq!((status, woken), (StatusCode::UNAUTHORIZED, false), "{headers:?}");
            assert_eq!(body["error"]["code"], "unauthorized", "{body}");
        }
    }

    #[tokio::test]
    async fn gitlab_push_with_the_right_token_wakes_the_source() {
        let headers = [("X-Gitlab-Token", SECRET), ("X-Gitlab-Event", "Push Hook")];
        let (status, _, woken) = deliver(&headers, "{}").await;
        assert_eq!((status, woken), (StatusCode::ACCEPTED, true));
        let headers = [("X-Gitlab-Token", SECRET), ("X-Gitlab-Event", "Issue Hook")];
        let (status, _, woken) = deliver(&headers, "{}").await;
        assert_eq!((status, woken), (StatusCode::OK, false));
    }

    #[test]
    fn an_empty_secret_is_refused() {
        let err = Webhook::new("", Arc::new(Notify::new())).err().unwrap();
        assert!(matches!(err, SourceError::EmptyWebhookSecret), "{err}");
    }
}
