//! The operator console: a few static files (HTML, CSS, JavaScript modules) compiled into the
//! binary and served at `/admin/` on the main listener. The page itself holds no data: it
//! signs in with the admin token and talks to the admin API (`/api/v1/admin/...`) like any
//! other client of it.
//!
//! Like the admin API, the console does not exist (404) while `ADMIN_API_TOKEN` is unset.
//! Every answer carries a strict Content-Security-Policy (only this origin's own scripts and
//! styles, nothing inline, no framing), so that even a value that slipped past the page's
//! text-only rendering could not run as script.
//!
//! Served by hand rather than with actix-files: the files are in the binary, not on disk, and
//! a table of a dozen entries with an ETag each is smaller than an embedding crate.

use std::sync::LazyLock;

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use sha2::{Digest, Sha256};

use super::AppState;
use crate::error::AppError;

/// Only this origin's own files; no inline script or style, no plugins, no framing, and
/// `fetch` only to this origin (the admin API).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One file of the console.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

macro_rules! asset {
    ($name:literal, $type:expr) => {
        Asset {
            name: $name,
            content_type: $type,
            body: include_str!(concat!("../console/static/", $name)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

static ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("dom.js", JS),
    asset!("money.js", JS),
    asset!("overview.js", JS),
    asset!("find.js", JS),
    asset!("order.js", JS),
    asset!("user.js", JS),
    asset!("packages.js", JS),
    asset!("recon.js", JS),
];

/// A strong ETag per file, computed once: the files change only with the binary.
static ETAGS: LazyLock<Vec<String>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| {
            let digest = Sha256::digest(a.body.as_bytes());
            let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
            format!("\"{hex}\"")
        })
        .collect()
});

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/admin", web::get().to(redirect))
        .route("/admin/", web::get().to(index))
        .route("/admin/{file}", web::get().to(file));
}

/// The console is there only where the admin API is.
fn enabled(st: &AppState) -> Result<(), AppError> {
    match st.settings.admin_api_token {
        Some(_) => Ok(()),
        None => Err(AppError::NotFound("route")),
    }
}

async fn redirect(st: web::Data<AppState>) -> Result<HttpResponse, AppError> {
    enabled(&st)?;
    Ok(HttpResponse::PermanentRedirect()
        .insert_header((header::LOCATION, "/admin/"))
        .finish())
}

async fn index(req: HttpRequest, st: web::Data<AppState>) -> Result<HttpResponse, AppError> {
    enabled(&st)?;
    Ok(serve(&req, 0))
}

async fn file(
    req: HttpRequest,
    st: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    enabled(&st)?;
    let i = ASSETS
        .iter()
        .position(|a| a.name == path.as_str())
        .ok_or(AppError::NotFound("file"))?;
    Ok(serve(&req, i))
}

/// The file at `ASSETS[i]`, or 304 when the browser's copy is current. `no-cache`: the names
/// carry no version, so the browser asks again each time (a 304 without a body when unchanged)
/// and a new binary's console is never mixed with an old one's cached modules.
fn serve(req: &HttpRequest, i: usize) -> HttpResponse {
    let asset = &ASSETS[i];
    let etag = &ETAGS[i];
    let fresh = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut res = if fresh {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    res.insert_header((header::ETAG, etag.as_str()))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((
            header::HeaderName::from_static("cross-origin-opener-policy"),
            HeaderValue::from_static("same-origin"),
        ));
    if fresh {
        return res.finish();
    }
    res.content_type(asset.content_type).body(asset.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_module_the_page_imports_is_served() {
        // Each `from "./x.js"` in a served file names a served file.
        for a in ASSETS {
            for part in a.body.split("from \"./").skip(1) {
                let name = part.split('"').next().unwrap_or("");
                assert!(
                    ASSETS.iter().any(|b| b.name == name),
                    "{} imports {name}, which is not served",
                    a.name
                );
            }
        }
        let index = ASSETS[0].body;
        for a in &ASSETS[1..] {
            if a.name == "style.css" || a.name == "app.js" {
                assert!(index.contains(a.name), "index.html loads {}", a.name);
            }
        }
    }

    #[test]
    fn no_inline_script_or_style_in_the_page() {
        let index = ASSETS[0].body;
        assert!(!index.contains("<script>"), "inline script");
        assert!(!index.contains("style="), "inline style");
        assert!(!index.contains("<style"), "inline style");
        assert!(!index.contains("onclick"), "inline handler");
    }
}
