//! The gateway's transport for HTTP/2 requests that are not gRPC (a client that speaks HTTP/2
//! to the JSON gateway or to `/health`).

use std::io;

use super::h2srv::{RecvStream, SendResponse, SendStream};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response};

use super::gateway::{HttpIn, HttpOut};
use super::stream::send_flow_controlled;

pub(crate) struct H2In {
    body: RecvStream,
}

impl H2In {
    pub fn new(body: RecvStream) -> H2In {
        H2In { body }
    }
}

impl HttpIn for H2In {
    async fn data(&mut self) -> io::Result<Option<Bytes>> {
        match self.body.data().await {
            Some(Ok(chunk)) => {
                self.body.release_capacity(chunk.len());
                Ok(Some(chunk))
            }
            Some(Err(e)) => Err(io::Error::other(e)),
            None => Ok(None),
        }
    }
}

pub(crate) struct H2Out {
    respond: SendResponse,
    stream: Option<SendStream>,
}

impl H2Out {
    pub fn new(respond: SendResponse) -> H2Out {
        H2Out {
            respond,
            stream: None,
        }
    }

    fn head(
        &mut self,
        status: u16,
        headers: &[(&str, &str)],
        end: bool,
    ) -> io::Result<Option<SendStream>> {
        let mut resp = Response::builder().status(status);
        for (k, v) in headers {
            // HTTP/2 has no `Trailer` header semantics to announce; the trailers just come.
            if !k.eq_ignore_ascii_case("trailer") {
                resp = resp.header(*k, *v);
            }
        }
        let resp = resp.body(()).map_err(io::Error::other)?;
        let stream = self
            .respond
            .send_response(resp, end)
            .map_err(io::Error::other)?;
        Ok((!end).then_some(stream))
    }

    fn stream(&mut self) -> io::Result<&mut SendStream> {
        self.stream
            .as_mut()
            .ok_or_else(|| io::Error::other("the response has not started"))
    }
}

impl HttpOut for H2Out {
    async fn whole(
        &mut self,
        status: u16,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<()> {
        if let Some(mut stream) = self.head(status, headers, body.is_empty())? {
            send_flow_controlled(&mut stream, Bytes::copy_from_slice(body))
                .await
                .map_err(io::Error::other)?;
            stream
                .send_data(Bytes::new(), true)
                .map_err(io::Error::other)?;
        }
        Ok(())
    }

    async fn start(&mut self, status: u16, headers: &[(&str, &str)]) -> io::Result<()> {
        self.stream = self.head(status, headers, false)?;
        Ok(())
    }

    async fn chunk(&mut self, data: &[u8]) -> io::Result<()> {
        let stream = self.stream()?;
        send_flow_controlled(stream, Bytes::copy_from_slice(data))
            .await
            .map_err(io::Error::other)
    }

    async fn end(&mut self, trailers: &[(&str, &str)]) -> io::Result<()> {
        let stream = self.stream()?;
        if trailers.is_empty() {
            return stream
                .send_data(Bytes::new(), true)
                .map_err(io::Error::other);
        }
        let mut map = HeaderMap::new();
        for (k, v) in trailers {
            let name = HeaderName::from_bytes(k.as_bytes()).map_err(io::Error::other)?;
            map.insert(name, HeaderValue::from_str(v).map_err(io::Error::other)?);
        }
        stream.send_trailers(map).map_err(io::Error::other)
    }

    async fn gone(&mut self) {
        match &mut self.stream {
            Some(s) => {
                let _ = std::future::poll_fn(|cx| s.poll_reset(cx)).await;
            }
            None => {
                let _ = std::future::poll_fn(|cx| self.respond.poll_reset(cx)).await;
            }
        }
    }
}
