//! Generated credentials with a handle (issue 17): `POST /v1/generators/{ns}/{kind}/{name}`
//! issues one and answers its handle and lease facts; `POST /v1/credentials/{id}/renew`
//! extends it and `DELETE /v1/credentials/{id}` revokes exactly that one.
//!
//! A handle is the credential's ledger entry id (a random UUID). Knowing it grants
//! nothing: only the workload it was issued to ([`Holder::same_workload`]) may use it, and
//! only when Cedar allows `renew` / `revoke` on the generator that issued it. Anything
//! else (an unknown id, another workload's, a denied decision) answers the same 404.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{
    Admitted, ApiError, AppState, Caller, ClientCa, EseBody, authorized_generator, issue_refused,
    ledger_ref, ledger_unavailable, revoke_now, secret_json, with_timeout,
};
use crate::authz::Action;
use crate::generators::{GenerateContext, Generated};
use crate::ledger::{Holder, LedgerEntry, lifecycle};

/// The longest renewal passed to a backend (one year): longer asks are capped to it, and
/// the backend caps further at the credential's maximum TTL.
const MAX_INCREMENT_SECS: u64 = 365 * 24 * 3600;

/// A credential's handle and lease facts, as `/v1` answers them.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CredentialFacts {
    /// The handle, when the credential is recorded (revocable); absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    /// When it lapses (RFC 3339, UTC), if it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<String>,
    /// Seconds from this answer until it lapses: schedules without trusting clocks to agree.
    #[serde(skip_serializing_if = "Option::is_none")]
    lease_duration: Option<u64>,
    /// Whether `POST /v1/credentials/{id}/renew` can extend it.
    renewable: bool,
}

impl CredentialFacts {
    fn new(id: Option<String>, expires_at: Option<u64>, renewable: bool) -> Self {
        let now = crate::generators::unix_now();
        CredentialFacts {
            renewable: renewable && id.is_some(),
            id,
            expires_at: expires_at.and_then(rfc3339),
            lease_duration: expires_at.map(|at| at.saturating_sub(now)),
        }
    }
}

/// Seconds since the epoch as RFC 3339 UTC (`2026-12-04T03:00:00Z`).
fn rfc3339(secs: u64) -> Option<String> {
    let at = time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).ok()?).ok()?;
    at.format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// Calls the generator for `caller` after the `generate` decision and accounts for the
/// credential ([`lifecycle::record_issue`]) before anything is answered. Returns the
/// credential and its handle (`None` when nothing was recorded: not revocable).
pub(super) async fn issue(
    state: &AppState,
    caller: &Caller,
    namespace: &str,
    kind: &str,
    name: &str,
) -> Result<(Generated, Option<String>), ApiError> {
    let snapshot = state.snapshot.load_full();
    let generator =
        authorized_generator(&snapshot, caller, Action::Generate, namespace, kind, name).await?;
    let holder = Holder::new(&caller.identity, caller.workload.as_deref());
    let generator_ref = ledger_ref(namespace, kind, name, &holder);
    let ctx = GenerateContext {
        workload: Some(caller.workload.as_ref().unwrap_or(&caller.identity)),
    };
    let generated = with_timeout(state.settings.backend_timeout, generator.generate(&ctx)).await?;
    let id = lifecycle::record_issue(
        state.ledger.as_deref(),
        generator.as_ref(),
        &generator_ref,
        &holder,
        &generated,
        state.settings.backend_timeout,
    )
    .await
    .map_err(issue_refused)?;
    Ok((generated, id))
}

/// `POST /v1/generators/{ns}/{kind}/{name}` → `{"data": {key: base64}, "credential": {…}}`.
pub(super) async fn v1_generate(
    State(state): State<AppState>,
    Path((namespace, kind, name)): Path<(String, String, String)>,
    Admitted { caller, body: _ }: Admitted<EseBody>,
) -> Result<Response, ApiError> {
    let (generated, id) = issue(&state, &caller, &namespace, &kind, &name).await?;
    let credential = CredentialFacts::new(id, generated.expires_at, generated.renewable);
    let encoded: BTreeMap<String, Zeroizing<String>> = generated
        .data
        .into_iter()
        .map(|(k, v)| {
            let v = Zeroizing::new(v);
            (k, Zeroizing::new(B64.encode(v.as_bytes())))
        })
        .collect();
    #[derive(Serialize)]
    struct Issued<'a> {
        data: BTreeMap<&'a str, &'a str>,
        credential: CredentialFacts,
    }
    secret_json(&Issued {
        data: encoded
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect(),
        credential,
    })
}

/// The body of a renewal: an optional `increment` in seconds (the backend's default
/// otherwise, for Vault the lease's TTL).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RenewBody {
    #[serde(rename = "ca.crt", default)]
    ca_crt: Option<String>,
    #[serde(default)]
    increment: Option<u64>,
}

impl ClientCa for RenewBody {
    fn ca_crt(&self) -> Option<&str> {
        self.ca_crt.as_deref().filter(|s| !s.is_empty())
    }
}

/// The caller's own credential `id`, after the `action` decision on the generator that
/// issued it; every refusal is the same 404.
async fn own_credential(
    state: &AppState,
    caller: &Caller,
    id: &str,
    action: Action,
) -> Result<LedgerEntry, ApiError> {
    // Handles are UUIDs in their canonical text; anything else names nothing.
    if uuid::Uuid::try_parse(id).map(|u| u.to_string()).as_deref() != Ok(id) {
        return Err(ApiError::NotFound);
    }
    let ledger = state.ledger.as_deref().ok_or(ApiError::NotFound)?;
    let entry = ledger
        .get(id)
        .await
        .map_err(ledger_unavailable)?
        .ok_or(ApiError::NotFound)?;
    let holder = Holder::new(&caller.identity, caller.workload.as_deref());
    if !entry.holder.same_workload(&holder) {
        tracing::info!(generator = %entry.generator, "credential handle of another workload");
        return Err(ApiError::NotFound);
    }
    let g = &entry.generator;
    let snapshot = state.snapshot.load_full();
    authorized_generator(&snapshot, caller, action, &g.namespace, &g.kind, &g.name).await?;
    Ok(entry)
}

/// `POST /v1/credentials/{id}/renew` → `{"credential": {…}}`; 409 when the backend will
/// not extend it (not renewable, gone, past its maximum TTL): issue a new one.
pub(super) async fn v1_renew(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Admitted {
        caller,
        body: request,
    }: Admitted<RenewBody>,
) -> Result<Response, ApiError> {
    if request.increment == Some(0) {
        return Err(ApiError::BadRequest(
            "increment must be at least 1 second".into(),
        ));
    }
    let increment = request.increment.map(|s| s.min(MAX_INCREMENT_SECS));
    let entry = own_credential(&state, &caller, &id, Action::Renew).await?;
    // A revocation is pending (a DELETE or the sweeper failed and will retry): renewing
    // would answer a new expiry for a credential about to be revoked.
    if !entry.renewable || entry.revoking() {
        return Err(ApiError::Conflict(
            "the credential cannot be renewed; issue a new one".into(),
        ));
    }
    let snapshot = state.snapshot.load_full();
    let generator = snapshot
        .generators
        .get(&entry.generator.lookup_key())
        .cloned()
        .ok_or(ApiError::NotFound)?;
    let ledger = state.ledger.as_deref().ok_or(ApiError::NotFound)?;
    let renewed = lifecycle::renew_entry(
        ledger,
        generator.as_ref(),
        &entry,
        increment,
        state.settings.backend_timeout,
    )
    .await
    .map_err(|e| match e {
        lifecycle::RenewError::NotRenewable => ApiError::Conflict(e.to_string()),
        lifecycle::RenewError::Backend(g) => ApiError::from(g),
        lifecycle::RenewError::NotRecorded(l) => ledger_unavailable(l),
    })?;
    #[derive(Serialize)]
    struct Answer {
        credential: CredentialFacts,
    }
    Ok(Json(Answer {
        credential: CredentialFacts::new(Some(id), Some(renewed.expires_at), renewed.renewable),
    })
    .into_response())
}

/// `DELETE /v1/credentials/{id}` → 204 once revoked at the backend (503 when that failed:
/// the sweeper retries it).
pub(super) async fn v1_revoke(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Admitted { caller, body: _ }: Admitted<EseBody>,
) -> Result<Response, ApiError> {
    let entry = own_credential(&state, &caller, &id, Action::Revoke).await?;
    let ledger = state.ledger.as_deref().ok_or(ApiError::NotFound)?;
    let snapshot = state.snapshot.load_full();
    revoke_now(&state, ledger, &snapshot, vec![entry], "request").await?;
    Ok(axum::http::StatusCode::NO_CONTENT.into_response())
}
