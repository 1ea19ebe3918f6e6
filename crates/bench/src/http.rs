//! A minimal keep-alive HTTP/1.1 client for the Consul and Nacos workloads: one connection per
//! client (hyper's client connection), re-dialed after an error. Failures come back as gRPC
//! statuses so that the shared driver counts and retries them as it does for etcd requests:
//! a refused connection is `Unavailable`, any non-2xx answer `Unknown` with its code.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tonic::Status;

/// One answer: status code, body and `X-Consul-Index` (0 when absent).
#[derive(Debug)]
pub struct Answer {
    /// HTTP status code.
    pub code: u16,
    /// The body.
    pub body: Bytes,
    /// The `X-Consul-Index` header.
    pub index: u64,
}

/// A keep-alive connection to one HTTP endpoint.
pub struct HttpConn {
    addr: String,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl HttpConn {
    /// A connection to `addr` (`host:port`), dialed on first use.
    pub fn new(addr: &str) -> HttpConn {
        HttpConn {
            addr: addr.trim_start_matches("http://").to_string(),
            sender: None,
        }
    }

    async fn dial(&mut self) -> Result<&mut SendRequest<Full<Bytes>>, Status> {
        let ready = match &mut self.sender {
            Some(s) => s.ready().await.is_ok(),
            None => false,
        };
        if !ready {
            let tcp = TcpStream::connect(&self.addr)
                .await
                .map_err(|e| Status::unavailable(format!("connect {}: {e}", self.addr)))?;
            let _ = tcp.set_nodelay(true);
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(|e| Status::unavailable(format!("handshake: {e}")))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            self.sender = Some(sender);
        }
        self.sender
            .as_mut()
            .ok_or_else(|| Status::internal("no connection"))
    }

    /// Sends one request; a non-2xx answer is an error.
    pub async fn send(&mut self, method: &str, path: &str, body: &str) -> Result<Answer, Status> {
        self.send_with(method, path, body, None, &[]).await
    }

    /// Sends one form-encoded request; a non-2xx answer is an error.
    pub async fn send_form(
        &mut self,
        method: &str,
        path: &str,
        body: &str,
    ) -> Result<Answer, Status> {
        self.send_form_with(method, path, body, &[]).await
    }

    /// Sends one form-encoded request with extra `headers`; a non-2xx answer is an error.
    pub async fn send_form_with(
        &mut self,
        method: &str,
        path: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> Result<Answer, Status> {
        let form = Some("application/x-www-form-urlencoded");
        self.send_with(method, path, body, form, headers).await
    }

    async fn send_with(
        &mut self,
        method: &str,
        path: &str,
        body: &str,
        content_type: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<Answer, Status> {
        let a = self
            .request(method, path, body, content_type, headers)
            .await?;
        if !(200..300).contains(&a.code) {
            return Err(Status::unknown(format!(
                "HTTP {}: {}",
                a.code,
                String::from_utf8_lossy(&a.body).trim()
            )));
        }
        Ok(a)
    }

    /// Sends one request and returns whatever it answered.
    pub async fn send_any(
        &mut self,
        method: &str,
        path: &str,
        body: &str,
    ) -> Result<Answer, Status> {
        self.request(method, path, body, None, &[]).await
    }

    async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: &str,
        content_type: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<Answer, Status> {
        let host = self.addr.clone();
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, host);
        if let Some(t) = content_type {
            req = req.header(http::header::CONTENT_TYPE, t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let sender = self.dial().await?;
        let resp = match sender.send_request(req).await {
            Ok(r) => r,
            Err(e) => {
                self.sender = None;
                return Err(Status::unavailable(format!("request: {e}")));
            }
        };
        let code = resp.status().as_u16();
        let index = resp
            .headers()
            .get("x-consul-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let body = match resp.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                self.sender = None;
                return Err(Status::unavailable(format!("body: {e}")));
            }
        };
        Ok(Answer { code, body, index })
    }
}
