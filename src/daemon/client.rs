//! The client side of pacpoold's socket, for the CLI and the tray.

use std::path::{Path, PathBuf};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use super::protocol::{Envelope, Event, Reply, Request};
use crate::proto::Progress;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach pacpoold at {path}: {source}; is it running? (`systemctl status pacpoold`)"
    )]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("lost the connection to pacpoold: {0}")]
    Io(#[from] std::io::Error),
    #[error("pacpoold closed the connection before answering")]
    Closed,
    #[error("pacpoold sent an unreadable reply: {0}")]
    Decode(#[from] serde_json::Error),
}

pub struct Client {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    line: String,
}

impl Client {
    pub async fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| ClientError::Connect {
                path: path.to_owned(),
                source,
            })?;
        let (r, w) = stream.into_split();
        Ok(Self {
            reader: BufReader::new(r),
            writer: w,
            line: String::new(),
        })
    }

    async fn send(&mut self, request: Request) -> Result<(), ClientError> {
        let mut line = serde_json::to_vec(&Envelope::new(request))?;
        line.push(b'\n');
        self.writer.write_all(&line).await?;
        Ok(())
    }

    async fn next(&mut self) -> Result<Reply, ClientError> {
        self.line.clear();
        if self.reader.read_line(&mut self.line).await? == 0 {
            return Err(ClientError::Closed);
        }
        Ok(serde_json::from_str(&self.line)?)
    }

    /// Sends a request and returns its final reply, passing `progress` lines to `on_progress`.
    pub async fn request(
        &mut self,
        request: Request,
        mut on_progress: impl FnMut(&Progress),
    ) -> Result<Reply, ClientError> {
        self.send(request).await?;
        loop {
            match self.next().await? {
                Reply::Progress { progress } => on_progress(&progress),
                reply => return Ok(reply),
            }
        }
    }

    /// Subscribes to events; call [`Client::next_event`] to read them.
    pub async fn subscribe(&mut self) -> Result<(), ClientError> {
        self.send(Request::Subscribe).await
    }

    /// The next event of a subscription.
    pub async fn next_event(&mut self) -> Result<Event, ClientError> {
        loop {
            if let Reply::Event { event } = self.next().await? {
                return Ok(event);
            }
        }
    }
}
