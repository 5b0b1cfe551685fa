//! A hook's stdout and stderr: split into lines and forwarded to the gear's
//! log, bounded.

use std::sync::{Arc, Mutex};

use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use super::CallShared;
use crate::host::{LogLevel, LogSource};

/// Most bytes of stdout+stderr kept from one hook call; the rest is dropped
/// and the drop is logged.
const OUTPUT_CAP: usize = 1 << 20;

/// Hook stdout/stderr: split into lines and forwarded to the gear's log, up
/// to a cap shared by both streams.
#[derive(Clone)]
pub(super) struct LogStream {
    pub(super) shared: Arc<CallShared>,
    pub(super) source: LogSource,
    pub(super) state: Arc<Mutex<StreamState>>,
}

#[derive(Default)]
pub(super) struct StreamState {
    partial: Vec<u8>,
    total: usize,
    truncated: bool,
}

impl LogStream {
    fn level(&self) -> LogLevel {
        match self.source {
            LogSource::Stderr => LogLevel::Warn,
            _ => LogLevel::Info,
        }
    }

    fn emit(&self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches(['\r', '\n']);
        self.shared.log(self.source, self.level(), text);
    }

    fn push(&self, bytes: &[u8]) {
        let mut state = gearhost_sys::lock::lock(&self.state);
        let room = OUTPUT_CAP.saturating_sub(state.total);
        let take = bytes.len().min(room);
        state.total += take;
        state.partial.extend_from_slice(&bytes[..take]);
        while let Some(pos) = state.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = state.partial.drain(..=pos).collect();
            self.emit(&line);
        }
        if take < bytes.len() && !state.truncated {
            state.truncated = true;
            self.shared.log(
                self.source,
                LogLevel::Warn,
                "hook output exceeded 1 MiB; the rest of it is dropped",
            );
        }
    }

    pub(super) fn flush_partial(&self) {
        let mut state = gearhost_sys::lock::lock(&self.state);
        if !state.partial.is_empty() {
            let line = std::mem::take(&mut state.partial);
            drop(state);
            self.emit(&line);
        }
    }
}

impl IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for LogStream {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogStream {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for LogStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.push(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
