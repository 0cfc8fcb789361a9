//! A merchant endpoint of a test's own: an HTTP server on a free loopback port that hands each
//! POST body to the test (a notification receiver, standing in for the merchant's callback).

use std::future::Future;

use actix_web::dev::ServerHandle;
use actix_web::{App, HttpResponse, HttpServer, web};

/// Serves `POST path` with `handler` on 127.0.0.1 (one worker, signals left to the test) until
/// the returned handle stops it; returns the endpoint's URL too.
pub fn post_endpoint<F, Fut>(path: &'static str, handler: F) -> (String, ServerHandle)
where
    F: Fn(web::Bytes) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = HttpResponse> + 'static,
{
    let server = HttpServer::new(move || {
        let handler = handler.clone();
        App::new().route(path, web::post().to(move |body: web::Bytes| handler(body)))
    })
    .workers(1)
    .disable_signals()
    .bind("127.0.0.1:0")
    .expect("bind the test's endpoint");
    let addr = server.addrs()[0];
    let server = server.run();
    let handle = server.handle();
    actix_rt::spawn(server);
    (format!("http://{addr}{path}"), handle)
}
