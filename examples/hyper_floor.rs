//! A bare hyper reverse proxy for the load benchmark's "hyper-floor"
//! contender: HTTP/1.1 in and out on one thread, pooled upstream
//! connections, and nothing else (no route, no token, no header hygiene, no
//! metrics). It measures what hyper and tokio cost per proxied request on the
//! machine, which is the floor under scopegate's warm-cache figure.
//!
//! ```text
//! cargo run --release --example hyper_floor -- 127.0.0.1:8081 127.0.0.1:8080
//! ```

use std::convert::Infallible;
use std::error::Error;
use std::sync::{Arc, Mutex};

use http::header::HOST;
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

type Pool = Arc<Mutex<Vec<http1::SendRequest<Incoming>>>>;
type Body = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, hyper::Error>;

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        return Err("usage: hyper_floor LISTEN_ADDR UPSTREAM_ADDR".into());
    };
    let host = HeaderValue::from_str(&upstream)?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = TcpListener::bind(&listen).await?;
            let pool: Pool = Arc::default();
            loop {
                let (stream, _) = listener.accept().await?;
                stream.set_nodelay(true)?;
                let (pool, upstream, host) = (Arc::clone(&pool), upstream.clone(), host.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let (pool, upstream, host) =
                            (Arc::clone(&pool), upstream.clone(), host.clone());
                        async move {
                            Ok::<_, Infallible>(
                                match forward(request, &pool, &upstream, host).await {
                                    Ok(response) => response.map(BodyExt::boxed_unsync),
                                    Err(_) => bad_gateway(),
                                },
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        })
}

async fn forward(
    request: Request<Incoming>,
    pool: &Pool,
    upstream: &str,
    host: HeaderValue,
) -> Result<Response<Incoming>, Box<dyn Error + Send + Sync>> {
    let (mut parts, body) = request.into_parts();
    parts.uri = parts
        .uri
        .path_and_query()
        .map_or_else(|| Uri::from_static("/"), |pq| Uri::from(pq.clone()));
    parts.headers.insert(HOST, host);
    let pooled = pool.lock().ok().and_then(|mut idle| {
        idle.retain(|s| !s.is_closed());
        let ready = idle.iter().position(http1::SendRequest::is_ready)?;
        Some(idle.swap_remove(ready))
    });
    let mut sender = match pooled {
        Some(sender) => sender,
        None => {
            let stream = TcpStream::connect(upstream).await?;
            stream.set_nodelay(true)?;
            let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            sender
        }
    };
    let response = sender
        .send_request(Request::from_parts(parts, body))
        .await?;
    // Parked at once: the next request takes it when it is ready again.
    if let Ok(mut idle) = pool.lock() {
        idle.push(sender);
    }
    Ok(response)
}

fn bad_gateway() -> Response<Body> {
    let mut response = Response::new(Empty::new().map_err(|e| match e {}).boxed_unsync());
    *response.status_mut() = StatusCode::BAD_GATEWAY;
    response
}
