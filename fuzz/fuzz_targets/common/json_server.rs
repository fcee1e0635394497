//! A loopback HTTP/1.1 server for the targets that fetch a fuzzed JSON
//! document (discovery, introspection): shared, so both answer alike.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

/// Serves every connection on `listener` with `answer(path)`: a status and
/// a JSON body, read afresh for each request.
pub async fn serve<F>(listener: tokio::net::TcpListener, answer: F)
where
    F: Fn(&str) -> (StatusCode, Bytes) + Clone + Send + Sync + 'static,
{
    while let Ok((stream, _)) = listener.accept().await {
        let answer = answer.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let (status, body) = answer(request.uri().path());
                async move {
                    Ok::<_, Infallible>(
                        Response::builder()
                            .status(status)
                            .header("content-type", "application/json")
                            .body(Full::new(body))
                            .expect("response"),
                    )
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
