//! The AdmissionReview envelope around [`mutate`](super::mutate::mutate): request in, response
//! out, in the form kube-apiserver v1.28 accepts (kube-core writes `patch` as an array of byte
//! values; the captured fixtures' README shows the apiserver applies it).

use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};

use super::mutate::{Context, Decision, InjectorConfig, NotInjected, mutate};

/// Why a request body could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("the body is not an AdmissionReview: {0}")]
    Parse(#[from] serde_json::Error),
    #[error("the AdmissionReview has no request")]
    NoRequest,
}

/// A parsed request: the pod, and what the answer must echo.
pub fn parse(body: &[u8]) -> Result<AdmissionRequest<Pod>, ReviewError> {
    let review: AdmissionReview<Pod> = serde_json::from_slice(body)?;
    review.try_into().map_err(|_| ReviewError::NoRequest)
}

/// The answer to `req`, and the decision it came from (for metrics and logs).
pub fn answer(
    req: &AdmissionRequest<Pod>,
    ctx: &Context,
    cfg: &InjectorConfig,
) -> (AdmissionReview<DynamicObject>, Decision) {
    let decision = match &req.object {
        Some(pod) => mutate(pod, ctx, cfg),
        None => Decision::CannotInject(NotInjected::Malformed, "the request carries no pod".into()),
    };
    respond(req, decision)
}

/// The answer for a decision already made.
pub fn respond(
    req: &AdmissionRequest<Pod>,
    decision: Decision,
) -> (AdmissionReview<DynamicObject>, Decision) {
    let allowed = AdmissionResponse::from(req);
    let response = match &decision {
        Decision::Skip | Decision::AlreadyInjected | Decision::CannotInject(..) => allowed,
        Decision::Deny(message) => allowed.deny(message),
        Decision::Inject(injection) => match allowed.clone().with_patch(injection.patch.clone()) {
            Ok(mut r) => {
                if !injection.warnings.is_empty() {
                    r.warnings = Some(injection.warnings.clone());
                }
                r
            }
            Err(e) => {
                let decision = Decision::CannotInject(
                    NotInjected::Malformed,
                    format!("cannot encode the patch: {e}"),
                );
                return (allowed.into_review(), decision);
            }
        },
    };
    (response.into_review(), decision)
}
