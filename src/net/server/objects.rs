//! The repository's routes of `cairn serve`, below `/repo`: objects read (whole or by
//! range), written and deleted as the access mode allows, listings, and many ranges in one
//! request. Object names are checked against the repository layout (`repo::objects`), so no
//! request reaches outside the repository directory.

use super::{Access, Shared, blocking};
use crate::error::Error;
use crate::net::wire::{ListedObject, MAX_BLOBS_BYTES};
use crate::repo::backend::{Backend, PutNew, RangeRequest};
use crate::repo::objects::{ObjectKind, valid_object_name};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::collections::HashMap;

/// A prefix for `list`: empty, `config`, or a layout directory with a trailing slash.
fn valid_prefix(prefix: &str) -> bool {
    prefix.is_empty()
        || valid_object_name(prefix)
        || valid_object_name(&format!("{prefix}x"))
        || ObjectKind::ALL.iter().any(|kind| kind.prefix() == prefix)
}

fn bad_name(name: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        format!("{name:?} is not an object of a cairn repository"),
    )
        .into_response()
}

/// `bytes=A-B` as (offset, length).
pub(crate) fn parse_range(value: &str) -> Option<(u64, u64)> {
    let (start, end) = value.strip_prefix("bytes=")?.split_once('-')?;
    let (start, end): (u64, u64) = (start.parse().ok()?, end.parse().ok()?);
    let length = end.checked_sub(start)?.checked_add(1)?;
    Some((start, length))
}

/// Refuses ranges a client cannot mean: past the end of their object, or more than
/// `MAX_BLOBS_BYTES` in all (the server allocates what is asked for).
fn check_ranges(backend: &dyn Backend, ranges: &[RangeRequest]) -> crate::error::Result<()> {
    let total = ranges
        .iter()
        .try_fold(0u64, |sum, r| sum.checked_add(r.length))
        .filter(|total| *total <= MAX_BLOBS_BYTES);
    if total.is_none() {
        return Err(Error::InvalidInput(format!(
            "more than {MAX_BLOBS_BYTES} bytes asked in one request"
        )));
    }
    // Ranges of one request mostly share a pack: its size is asked once (a request to
    // the store when it is an object store).
    let mut sizes = HashMap::new();
    for range in ranges {
        let size = match sizes.get(&range.name) {
            Some(&size) => size,
            None => *sizes
                .entry(range.name.clone())
                .or_insert(backend.size(&range.name)?),
        };
        if range
            .offset
            .checked_add(range.length)
            .is_none_or(|end| end > size)
        {
            return Err(Error::InvalidInput(format!(
                "{} holds {size} bytes: {} at {} is past its end",
                range.name, range.length, range.offset
            )));
        }
    }
    Ok(())
}

async fn get_object(
    State(state): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !valid_object_name(&name) {
        return bad_name(&name);
    }
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(|v| parse_range(v).ok_or(v.to_owned()));
    let result = match range {
        Some(Err(v)) => {
            return (StatusCode::BAD_REQUEST, format!("unreadable range {v:?}")).into_response();
        }
        Some(Ok((offset, length))) => {
            let partial = blocking(move || {
                let backend = state.backend()?;
                let range = RangeRequest {
                    name: name.clone(),
                    offset,
                    length,
                };
                check_ranges(backend, std::slice::from_ref(&range))?;
                backend.get_range(&name, offset, length)
            })
            .await;
            partial.map(|bytes| (StatusCode::PARTIAL_CONTENT, bytes))
        }
        None => blocking(move || state.backend()?.get(&name))
            .await
            .map(|bytes| (StatusCode::OK, bytes)),
    };
    match result {
        Ok(found) => found.into_response(),
        Err(response) => response,
    }
}

async fn put_object(
    State(state): State<Shared>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    if !valid_object_name(&name) {
        return bad_name(&name);
    }
    if state.access == Access::ReadOnly {
        return (StatusCode::FORBIDDEN, "this server is read-only").into_response();
    }
    let result = blocking(move || {
        let backend = state.backend()?;
        if state.access == Access::AppendOnly && ObjectKind::of(&name) != Some(ObjectKind::Lock) {
            // An identical object is a retried upload (a run killed before its index file,
            // say): accepted, since nothing changes.
            return Ok(backend.put_new(&name, &body)? != PutNew::Different);
        }
        backend.put(&name, &body)?;
        Ok(true)
    })
    .await;
    match result {
        Ok(true) => StatusCode::CREATED.into_response(),
        Ok(false) => (
            StatusCode::CONFLICT,
            "this server is append-only: an existing object is never overwritten",
        )
            .into_response(),
        Err(response) => response,
    }
}

async fn delete_object(State(state): State<Shared>, Path(name): Path<String>) -> Response {
    if !valid_object_name(&name) {
        return bad_name(&name);
    }
    let allowed = match state.access {
        Access::ReadWrite => true,
        Access::AppendOnly => ObjectKind::of(&name) == Some(ObjectKind::Lock),
        Access::ReadOnly => false,
    };
    if !allowed {
        return (
            StatusCode::FORBIDDEN,
            "this server does not delete objects (read-only or append-only)",
        )
            .into_response();
    }
    match blocking(move || state.backend()?.delete(&name)).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(response) => response,
    }
}

async fn list_objects(State(state): State<Shared>, prefix: Option<Path<String>>) -> Response {
    let prefix = prefix.map(|Path(p)| p).unwrap_or_default();
    if !valid_prefix(&prefix) {
        return bad_name(&prefix);
    }
    let listed = blocking(move || state.backend()?.list(&prefix)).await;
    match listed {
        Ok(objects) => {
            let objects: Vec<ListedObject> = objects
                .into_iter()
                .map(|o| ListedObject {
                    name: o.name,
                    size: o.size,
                })
                .collect();
            axum::Json(objects).into_response()
        }
        Err(response) => response,
    }
}

async fn get_ranges(State(state): State<Shared>, body: Bytes) -> Response {
    let ranges: Vec<RangeRequest> = match serde_json::from_slice(&body) {
        Ok(ranges) => ranges,
        Err(e) => {
            return (StatusCode::BAD_REQUEST, format!("unreadable ranges: {e}")).into_response();
        }
    };
    if let Some(bad) = ranges.iter().find(|r| !valid_object_name(&r.name)) {
        return bad_name(&bad.name);
    }
    let read = blocking(move || {
        let backend = state.backend()?;
        check_ranges(backend, &ranges)?;
        backend.get_ranges(&ranges)
    });
    match read.await {
        Ok(parts) => parts.concat().into_response(),
        Err(response) => response,
    }
}

/// The repository's routes, below `/repo`.
pub(super) fn routes() -> Router<Shared> {
    Router::new()
        .route(
            "/objects/{*name}",
            get(get_object).put(put_object).delete(delete_object),
        )
        .route("/list/", get(list_objects))
        .route("/list/{*prefix}", get(list_objects))
        .route("/ranges", post(get_ranges))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_repository_objects_are_reachable() {
        for good in [
            "config",
            "keys/ab12",
            "data/ab/ab12cd",
            "index/ff",
            "locks/x-1",
        ] {
            assert!(valid_object_name(good), "{good}");
        }
        for bad in [
            "",
            "..",
            "../etc/passwd",
            "data/../config",
            "data//x",
            "data/.hidden",
            "/config",
            "other/x",
            "keys",
            "data/a b",
            "data/%2e%2e",
        ] {
            assert!(!valid_object_name(bad), "{bad}");
        }
        assert!(valid_prefix("data/") && valid_prefix("") && !valid_prefix("../"));
        assert_eq!(parse_range("bytes=10-19"), Some((10, 10)));
        assert_eq!(parse_range("bytes=19-10"), None);
    }
}
