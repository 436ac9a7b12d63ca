//! `GET /tuf/...`: the TUF repository's files, served so that a CDN or any HTTP cache in
//! front of the controller can keep them.
//!
//! - Only files under `metadata/` and `targets/` are served: the repository's own
//!   bookkeeping (`waveguide-tuf.json`, the `.lock` file) and anything whose name starts
//!   with a dot are not.
//! - No symbolic link is followed, at any depth: every component is opened with
//!   `O_NOFOLLOW` relative to the one before, so a link placed in the repository cannot
//!   serve a file from elsewhere. Only regular files are served; a directory is 404, never
//!   a redirect.
//! - `timestamp.json` and the unversioned `root.json` change in place: `Cache-Control:
//!   no-cache`, so a cache revalidates them every time (cheap, with the ETag). Versioned
//!   metadata (`<n>.<role>.json`) and content-addressed target files
//!   (`<sha256>.<name>`) never change: `immutable`, cached for a year.
//! - Every answer carries a strong ETag (inode, size and modification time: the
//!   repository replaces files by renaming new ones into place), and `If-None-Match`
//!   gets `304 Not Modified`.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::{Api, ApiError};

/// `Cache-Control` of files that change in place.
const REVALIDATE: &str = "no-cache";
/// `Cache-Control` of files that never change once written.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

pub(super) async fn tuf_file(
    State(api): State<Arc<Api>>,
    UrlPath(path): UrlPath<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::NotFound(format!("no TUF file /tuf/{path}"));
    let Some(root) = api.config.tuf_dir.clone() else { return Err(not_found()) };
    let Some(cache_control) = servable(&path) else { return Err(not_found()) };
    let relative = path.clone();
    let opened = tokio::task::spawn_blocking(move || open_beneath(&root, &relative))
        .await
        .map_err(|e| ApiError::Internal(format!("reading a TUF file: {e}")))?;
    let (file, metadata) = match opened {
        Ok(Some(found)) => found,
        Ok(None) => return Err(not_found()),
        Err(e) => return Err(ApiError::Internal(format!("reading TUF file {path}: {e}"))),
    };
    let etag = format!("\"{:x}-{:x}-{:x}\"", metadata.ino(), metadata.len(), mtime_ns(&metadata));
    let etag = HeaderValue::from_str(&etag).expect("hex digits and quotes are a valid header value");
    let mut response = if matches_etag(&headers, &etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let content_type =
            if path.ends_with(".json") { "application/json" } else { "application/octet-stream" };
        let stream = tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(file));
        let mut response = Body::from_stream(stream).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(metadata.len()));
        response
    };
    let headers = response.headers_mut();
    headers.insert(header::ETAG, etag);
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache_control));
    Ok(response)
}

/// The `Cache-Control` of a repository path that may be served, `None` for any other.
fn servable(path: &str) -> Option<&'static str> {
    let components: Vec<&str> = path.split('/').collect();
    let fine = |c: &&str| !c.is_empty() && !c.starts_with('.') && !c.contains(['\0', '\\']);
    if components.len() < 2 || !components.iter().all(fine) {
        return None;
    }
    let name = components[components.len() - 1];
    match components[0] {
        "metadata" if components.len() == 2 => {
            // `<n>.<role>.json` is one version of a role, written once.
            let versioned = name.split_once('.').is_some_and(|(n, _)| n.bytes().all(|b| b.is_ascii_digit()));
            Some(if versioned { IMMUTABLE } else { REVALIDATE })
        }
        "targets" => {
            // Consistent snapshots name target files `<sha256 of the content>.<name>`.
            let hashed = name
                .split_once('.')
                .is_some_and(|(hash, _)| hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()));
            Some(if hashed { IMMUTABLE } else { REVALIDATE })
        }
        _ => None,
    }
}

/// Opens `relative` beneath `root` without following a symbolic link at any component;
/// `None` when it does not exist, is reached through a link, or is not a regular file.
fn open_beneath(root: &Path, relative: &str) -> std::io::Result<Option<(File, std::fs::Metadata)>> {
    let mut dir: OwnedFd = File::open(root)?.into();
    let mut components = relative.split('/').peekable();
    while let Some(name) = components.next() {
        let last = components.peek().is_none();
        let flags = libc::O_RDONLY
            | libc::O_NOFOLLOW
            | libc::O_CLOEXEC
            | if last { libc::O_NONBLOCK } else { libc::O_DIRECTORY };
        let name = std::ffi::CString::new(std::ffi::OsStr::new(name).as_bytes())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: `dir` is an open directory descriptor and `name` a NUL-terminated string.
        let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags) };
        if fd < 0 {
            let error = std::io::Error::last_os_error();
            return match error.raw_os_error() {
                // Missing; a link (ELOOP); not a directory where one was expected.
                Some(libc::ENOENT | libc::ELOOP | libc::ENOTDIR) => Ok(None),
                _ => Err(error),
            };
        }
        // SAFETY: `fd` was just returned by openat and is owned by nothing else.
        dir = unsafe { OwnedFd::from_raw_fd(fd) };
    }
    let file = File::from(dir);
    let metadata = file.metadata()?;
    Ok(metadata.is_file().then_some((file, metadata)))
}

fn mtime_ns(metadata: &std::fs::Metadata) -> i128 {
    i128::from(metadata.mtime()) * 1_000_000_000 + i128::from(metadata.mtime_nsec())
}

/// Whether `If-None-Match` names `etag` (or is `*`); weak tags compare by their value.
fn matches_etag(headers: &HeaderMap, etag: &HeaderValue) -> bool {
    let etag = etag.to_str().unwrap_or_default();
    headers.get_all(header::IF_NONE_MATCH).iter().filter_map(|v| v.to_str().ok()).any(|list| {
        list.split(',').map(str::trim).any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_metadata_and_targets_are_servable() {
        let hash = "ab".repeat(32);
        assert_eq!(servable("metadata/timestamp.json"), Some(REVALIDATE));
        assert_eq!(servable("metadata/root.json"), Some(REVALIDATE));
        assert_eq!(servable("metadata/3.root.json"), Some(IMMUTABLE));
        assert_eq!(servable("metadata/12.snapshot.json"), Some(IMMUTABLE));
        assert_eq!(servable(&format!("targets/devices/{hash}.d1.json")), Some(IMMUTABLE));
        assert_eq!(servable("targets/devices/d1.json"), Some(REVALIDATE));
        for refused in [
            "waveguide-tuf.json",
            ".lock",
            "metadata",
            "metadata/",
            "metadata/.lock",
            "metadata/sub/1.root.json",
            "targets/../waveguide-tuf.json",
            "targets/./x",
            "targets//x",
            "keys/online.pem",
        ] {
            assert_eq!(servable(refused), None, "{refused}");
        }
    }
}
