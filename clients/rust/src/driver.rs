//! The background task that owns the connection: connects, reconnects with backoff, keeps the
//! outgoing queue, and in reliable mode runs the `ch-reliable.v1` session (PROTOCOL.md).
//!
//! One task owns all state, so nothing is shared behind locks: the handles talk to it through
//! [`Command`]s and hear from it through events and the state watch.

use std::collections::VecDeque;
use std::fmt::Display;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use http::HeaderValue;
use http::header::SEC_WEBSOCKET_PROTOCOL;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

use crate::frame::{self, ClientFrame, HostFrame, Order, RELIABLE, Welcome};
use crate::options::TokenPlacement;
use crate::{Error, Event, Message, Options, State};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Sink = SplitSink<Ws, WsMessage>;
type Stream = SplitStream<Ws>;
type ReplyTx = oneshot::Sender<Result<Option<Message>, Error>>;

/// The host sends 4000 to say "resume", 4001 to say "another connection took the session".
const CLOSE_RESUME: u16 = 4000;
const CLOSE_REPLACED: u16 = 4001;
/// Acknowledge at once after this many unacknowledged frames (PROTOCOL.md section 5.2).
const ACK_EVERY: u32 = 64;
/// The error of a `reply` whose message was not invoked because the host could not claim its key
/// (PROTOCOL.md section 6): the message is sent again, with the same key, after a delay.
const NOT_INVOKED: &str = "Service Unavailable";
/// How long a deliberate close waits for the host's Close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// A request from a handle to the task.
pub(crate) enum Command {
    /// Queue and send a message; `accepted` gets its idempotency key or why it was refused.
    Send {
        message: Message,
        reply: Option<ReplyTx>,
        accepted: oneshot::Sender<Result<String, Error>>,
    },
    /// The caller of a request stopped waiting.
    Cancel { id: String },
    /// Close deliberately; `done` is answered when the task has ended.
    Close { done: oneshot::Sender<()> },
}

/// A message the client still holds.
struct Outgoing {
    id: String,
    message: Message,
    reply: Option<ReplyTx>,
    /// Written to some connection at least once: the host may have it, so it can no longer be
    /// withdrawn.
    written: bool,
    /// When to send it again, after a `Service Unavailable` reply.
    resend_at: Option<Instant>,
    /// `Service Unavailable` replies so far: the exponent of the delay before the next resend.
    refusals: u32,
}

/// How a phase ended.
enum Outcome {
    /// Reconnect after the backoff delay.
    Retry,
    /// End the client; `None` for a deliberate close.
    Stop(Option<Error>),
}

/// Per-connection state.
struct Link {
    sink: Sink,
    /// Plain connections are ready at once; reliable ones once their `welcome` arrived.
    welcomed: bool,
    unacked: u32,
    ack_at: Option<Instant>,
    ping_at: Instant,
    dead_at: Option<Instant>,
}

impl Link {
    /// Anything from the host proves the connection alive.
    fn heard(&mut self, options: &Options) {
        self.dead_at = None;
        self.ping_at = Instant::now() + options.heartbeat_interval;
    }

    async fn write(&mut self, frame: WsMessage) -> Result<(), Outcome> {
        self.sink.send(frame).await.map_err(lost)
    }
}

fn lost(reason: impl Display) -> Outcome {
    tracing::info!(%reason, "connection lost");
    Outcome::Retry
}

/// An instant far enough away to stand for "never" in a `select!`.
fn never() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

pub(crate) struct Driver {
    options: Arc<Options>,
    commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::Sender<Event>,
    state: watch::Sender<State>,
    /// Consecutive attempts since the last stable connection; the backoff exponent.
    attempt: u32,
    ever_connected: bool,
    outbox: VecDeque<Outgoing>,
    outbox_bytes: usize,
    /// Random per client, so that keys stay unique across sessions and processes, which lets a
    /// handler dedup on `idempotencyKey` beyond the host's per-session window.
    key_prefix: String,
    next_key: u64,
    /// The last sequence number delivered in order.
    last_seq: u64,
    resume_token: Option<String>,
    close_waiters: Vec<oneshot::Sender<()>>,
}

impl Driver {
    pub(crate) fn new(
        options: Options,
        commands: mpsc::UnboundedReceiver<Command>,
        events: mpsc::Sender<Event>,
        state: watch::Sender<State>,
    ) -> Driver {
        let prefix: [u8; 9] = rand::random();
        Driver {
            options: Arc::new(options),
            commands,
            events,
            state,
            attempt: 0,
            ever_connected: false,
            outbox: VecDeque::new(),
            outbox_bytes: 0,
            key_prefix: URL_SAFE_NO_PAD.encode(prefix),
            next_key: 1,
            last_seq: 0,
            resume_token: None,
            close_waiters: Vec::new(),
        }
    }

    pub(crate) async fn run(mut self) {
        let end = loop {
            let outcome = match self.connect().await {
                Ok(ws) => self.serve(ws).await,
                Err(outcome) => outcome,
            };
            if let Outcome::Stop(end) = outcome {
                break end;
            }
            self.set_state(self.waiting_state()).await;
            let delay = self.options.backoff.delay(self.attempt);
            self.attempt = self.attempt.saturating_add(1);
            tracing::debug!(?delay, attempt = self.attempt, "reconnecting after a delay");
            if let Some(Outcome::Stop(end)) = self.wait(delay).await {
                break end;
            }
        };
        self.finish(end).await;
    }

    /// The state between connections: `Connecting` until the first one was ready.
    fn waiting_state(&self) -> State {
        if self.ever_connected {
            State::Reconnecting
        } else {
            State::Connecting
        }
    }

    /// Waits out a backoff delay while still taking commands.
    async fn wait(&mut self, delay: Duration) -> Option<Outcome> {
        let until = Instant::now() + delay;
        loop {
            tokio::select! {
                () = sleep_until(until) => return None,
                cmd = self.commands.recv() => {
                    if let Some(stop) = self.offline_command(cmd) {
                        return Some(stop);
                    }
                }
            }
        }
    }

    async fn connect(&mut self) -> Result<Ws, Outcome> {
        self.set_state(self.waiting_state()).await;
        let resume = if self.options.reliable {
            self.resume_token.clone().map(|t| (self.last_seq, t))
        } else {
            None
        };
        let attempt = tokio::time::timeout(
            self.options.connect_timeout,
            open(self.options.clone(), resume),
        );
        tokio::pin!(attempt);
        loop {
            tokio::select! {
                result = &mut attempt => {
                    let error = match result {
                        Ok(Ok(ws)) => return Ok(ws),
                        Ok(Err(e)) => e,
                        Err(_) => Error::Connect("timed out".to_owned()),
                    };
                    if error.is_terminal() {
                        return Err(Outcome::Stop(Some(error)));
                    }
                    tracing::info!(%error, "connection attempt failed");
                    self.emit(Event::Error(error)).await;
                    return Err(Outcome::Retry);
                }
                cmd = self.commands.recv() => {
                    if let Some(stop) = self.offline_command(cmd) {
                        return Err(stop);
                    }
                }
            }
        }
    }

    /// Runs one open connection until it ends.
    async fn serve(&mut self, ws: Ws) -> Outcome {
        let options = self.options.clone();
        let (sink, mut stream) = ws.split();
        let up_since = Instant::now();
        let mut link = Link {
            sink,
            welcomed: !options.reliable,
            unacked: 0,
            ack_at: None,
            ping_at: up_since + options.heartbeat_interval,
            dead_at: None,
        };
        let outcome = 'conn: {
            if link.welcomed
                && let Err(o) = self.ready(&mut link, None).await
            {
                break 'conn o;
            }
            loop {
                let welcome_by = (!link.welcomed).then_some(up_since + options.connect_timeout);
                let resend_at = self.outbox.iter().filter_map(|o| o.resend_at).min();
                let step = tokio::select! {
                    frame = stream.next() => {
                        link.heard(&options);
                        let step = match frame {
                            None => Err(lost("the host closed the connection")),
                            Some(Err(e)) => Err(lost(e)),
                            Some(Ok(frame)) => self.on_ws_message(frame, &mut link).await,
                        };
                        // Delivering may have waited for the application; that time is not silence.
                        link.heard(&options);
                        step
                    }
                    cmd = self.commands.recv() => self.online_command(cmd, &mut link, &mut stream).await,
                    () = sleep_until(link.ack_at.unwrap_or_else(never)), if link.ack_at.is_some() => {
                        self.send_ack(&mut link).await
                    }
                    () = sleep_until(link.ping_at) => {
                        link.ping_at = never();
                        link.dead_at = Some(Instant::now() + options.heartbeat_timeout);
                        let ping = if options.reliable {
                            WsMessage::text(ClientFrame::Ping {}.to_json())
                        } else {
                            WsMessage::Ping(Default::default())
                        };
                        link.write(ping).await
                    }
                    () = sleep_until(link.dead_at.unwrap_or_else(never)), if link.dead_at.is_some() => {
                        Err(lost("no answer to the heartbeat"))
                    }
                    () = sleep_until(welcome_by.unwrap_or_else(never)), if welcome_by.is_some() => {
                        Err(lost("no welcome frame"))
                    }
                    () = sleep_until(resend_at.unwrap_or_else(never)), if resend_at.is_some() => {
                        self.resend_due(&mut link).await
                    }
                };
                if let Err(o) = step {
                    break 'conn o;
                }
            }
        };
        if up_since.elapsed() >= options.stable_after {
            self.attempt = 0;
        }
        outcome
    }

    async fn on_ws_message(&mut self, frame: WsMessage, link: &mut Link) -> Result<(), Outcome> {
        match frame {
            WsMessage::Text(text) if self.options.reliable => {
                self.on_frame(text.as_str(), link).await
            }
            WsMessage::Text(text) => {
                self.emit(Event::Message(Message::Text(text.as_str().to_owned())))
                    .await;
                Ok(())
            }
            WsMessage::Binary(_) if self.options.reliable => {
                tracing::warn!("ignoring a binary message on a reliable connection");
                Ok(())
            }
            WsMessage::Binary(data) => {
                self.emit(Event::Message(Message::Binary(data))).await;
                Ok(())
            }
            WsMessage::Close(frame) => Err(self.on_close(frame)),
            _ => Ok(()),
        }
    }

    fn on_close(&mut self, frame: Option<CloseFrame>) -> Outcome {
        let code = frame.as_ref().map(|f| u16::from(f.code));
        tracing::info!(?code, "the host closed the connection");
        match code {
            // Another connection resumed the session. This client holds one connection at a time,
            // so that was one of its own attempts it had given up on that completed late (or
            // someone holding its token): resume again with the latest token it has.
            Some(CLOSE_REPLACED) if self.options.reliable => Outcome::Retry,
            // Any other code from the host means the session ended (PROTOCOL.md section 7). The
            // next connection offers its token all the same: the host cannot resume an ended
            // session, but the token proves this client held it, so the new session carries on
            // its idempotency keys and the unanswered messages sent again are not invoked twice
            // (section 6.7).
            _ => Outcome::Retry,
        }
    }

    async fn on_frame(&mut self, text: &str, link: &mut Link) -> Result<(), Outcome> {
        let frame: HostFrame = match serde_json::from_str(text) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring a frame that is not a ch-reliable.v1 frame");
                return Ok(());
            }
        };
        match frame {
            HostFrame::Welcome(welcome) => self.on_welcome(welcome, link).await,
            HostFrame::Msg { s, payload } => {
                if !self.in_order(s, link).await? {
                    return Ok(());
                }
                match payload.into_message() {
                    Ok(Some(message)) => self.emit(Event::Message(message)).await,
                    Ok(None) => tracing::warn!(s, "a msg frame without payload"),
                    Err(e) => tracing::warn!(s, error = %e, "a msg frame with a bad payload"),
                }
                self.note_sequenced(link).await
            }
            HostFrame::Reply {
                s,
                id,
                payload,
                error,
            } => {
                if !self.in_order(s, link).await? {
                    return Ok(());
                }
                if error.as_ref().is_some_and(|e| e.message == NOT_INVOKED)
                    && self.resend_later(&id)
                {
                    return self.note_sequenced(link).await;
                }
                let result = match error {
                    Some(e) => Err(Error::Reply {
                        id: id.clone(),
                        message: e.message,
                        request_id: e.request_id,
                    }),
                    None => payload.into_message().map_err(|message| Error::Protocol {
                        code: "BadReply".to_owned(),
                        message,
                    }),
                };
                self.answer(&id, result).await;
                self.note_sequenced(link).await
            }
            HostFrame::Error { code, message, id } => {
                let error = Error::Protocol { code, message };
                tracing::warn!(%error, "the host refused a frame");
                // The host ignored the frame, so sending the message again would not help.
                if let Some(id) = id
                    && let Some(pos) = self.outbox.iter().position(|o| o.id == id)
                {
                    let out = self.remove(pos);
                    if let Some(reply) = out.reply {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
                self.emit(Event::Error(error)).await;
                Ok(())
            }
            HostFrame::Other => Ok(()),
        }
    }

    /// Applies the sequence rule to a `msg` or `reply`: `Ok(true)` to deliver it, `Ok(false)`
    /// for a replay (acknowledged, not delivered), `Err` for a gap (the connection is closed
    /// with 4000 and resumed).
    async fn in_order(&mut self, s: u64, link: &mut Link) -> Result<bool, Outcome> {
        if !link.welcomed {
            tracing::warn!(s, "ignoring a sequenced frame before the welcome");
            return Ok(false);
        }
        match frame::order(self.last_seq, s) {
            Order::Next => {
                self.last_seq = s;
                Ok(true)
            }
            Order::Replay => {
                self.note_sequenced(link).await?;
                Ok(false)
            }
            Order::Gap => {
                tracing::warn!(
                    expected = self.last_seq + 1,
                    got = s,
                    "sequence gap: resuming"
                );
                let close = CloseFrame {
                    code: CloseCode::from(CLOSE_RESUME),
                    reason: "Resume".into(),
                };
                let _ = link.write(WsMessage::Close(Some(close))).await;
                Err(Outcome::Retry)
            }
        }
    }

    async fn note_sequenced(&mut self, link: &mut Link) -> Result<(), Outcome> {
        link.unacked += 1;
        if link.unacked >= ACK_EVERY {
            return self.send_ack(link).await;
        }
        if link.ack_at.is_none() {
            link.ack_at = Some(Instant::now() + self.options.ack_delay);
        }
        Ok(())
    }

    async fn send_ack(&mut self, link: &mut Link) -> Result<(), Outcome> {
        link.unacked = 0;
        link.ack_at = None;
        let ack = ClientFrame::Ack { s: self.last_seq }.to_json();
        link.write(WsMessage::text(ack)).await
    }

    async fn on_welcome(&mut self, welcome: Welcome, link: &mut Link) -> Result<(), Outcome> {
        if link.welcomed {
            tracing::warn!("ignoring a second welcome");
            return Ok(());
        }
        if welcome.recovered {
            if welcome.seq != self.last_seq {
                tracing::warn!(
                    ours = self.last_seq,
                    theirs = welcome.seq,
                    "resumed at another sequence number"
                );
            }
        } else {
            // A fresh session numbers from 1 again (PROTOCOL.md section 4).
            self.last_seq = welcome.seq;
        }
        // The token goes back as part of a subprotocol name; one that cannot be is not kept,
        // and the next connection starts a new session instead of failing its handshake.
        let usable = !welcome.resume_token.is_empty()
            && welcome
                .resume_token
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b',');
        if !usable {
            tracing::warn!("the host's resume token cannot be offered as a subprotocol");
        }
        self.resume_token = usable.then_some(welcome.resume_token);
        link.welcomed = true;
        tracing::info!(connection_id = %welcome.connection_id, recovered = welcome.recovered, reason = ?welcome.reason, "session ready");
        let info = Event::Connected {
            first: !self.ever_connected,
            recovered: welcome.recovered,
            connection_id: Some(welcome.connection_id),
            reason: welcome.reason,
            protocol: welcome.protocol,
        };
        self.ready(link, Some(info)).await
    }

    /// The connection can carry messages: report it and send everything held, in order.
    async fn ready(&mut self, link: &mut Link, info: Option<Event>) -> Result<(), Outcome> {
        let first = !self.ever_connected;
        self.ever_connected = true;
        self.set_state(State::Connected).await;
        let info = info.unwrap_or(Event::Connected {
            first,
            recovered: false,
            connection_id: None,
            reason: None,
            protocol: None,
        });
        self.emit(info).await;
        self.flush(link, true).await
    }

    /// Writes the messages held: in reliable mode every unanswered one (`all`, after a welcome:
    /// a resume or a new session may not have them) or only those never written; in plain mode
    /// the queue, which empties as it goes.
    async fn flush(&mut self, link: &mut Link, all: bool) -> Result<(), Outcome> {
        if !link.welcomed {
            return Ok(());
        }
        if self.options.reliable {
            let mut wrote = false;
            for out in self.outbox.iter_mut().filter(|o| all || !o.written) {
                let text = ClientFrame::msg(&out.id, &out.message).to_json();
                link.sink.feed(WsMessage::text(text)).await.map_err(lost)?;
                out.written = true;
                out.resend_at = None;
                wrote = true;
            }
            if wrote {
                link.sink.flush().await.map_err(lost)?;
            }
        } else {
            while let Some(out) = self.outbox.front() {
                let frame = match &out.message {
                    Message::Text(t) => WsMessage::text(t.clone()),
                    Message::Binary(b) => WsMessage::Binary(b.clone()),
                };
                link.write(frame).await?;
                self.remove(0);
            }
        }
        Ok(())
    }

    /// Schedules message `id` to be sent again (the host did not invoke it), after the reconnect
    /// backoff's delay for its number of refusals; `false` when the message is no longer held.
    fn resend_later(&mut self, id: &str) -> bool {
        let Some(out) = self.outbox.iter_mut().find(|o| o.id == id) else {
            return false;
        };
        let delay = self.options.backoff.delay(out.refusals);
        out.refusals = out.refusals.saturating_add(1);
        out.resend_at = Some(Instant::now() + delay);
        tracing::debug!(
            id,
            ?delay,
            "message not invoked by the host; sending it again later"
        );
        true
    }

    /// Sends again the messages whose resend time has come.
    async fn resend_due(&mut self, link: &mut Link) -> Result<(), Outcome> {
        let now = Instant::now();
        for out in self
            .outbox
            .iter_mut()
            .filter(|o| o.resend_at.is_some_and(|at| at <= now))
        {
            let text = ClientFrame::msg(&out.id, &out.message).to_json();
            link.sink.feed(WsMessage::text(text)).await.map_err(lost)?;
            out.resend_at = None;
        }
        link.sink.flush().await.map_err(lost)
    }

    async fn answer(&mut self, id: &str, result: Result<Option<Message>, Error>) {
        let Some(pos) = self.outbox.iter().position(|o| o.id == id) else {
            // A second reply to a message sent twice, or one withdrawn: already settled.
            tracing::debug!(id, "reply to a message no longer held");
            return;
        };
        let out = self.remove(pos);
        match out.reply {
            Some(reply) => {
                let _ = reply.send(result);
            }
            None => {
                if let Err(error) = result {
                    self.emit(Event::Error(error)).await;
                }
            }
        }
    }

    fn remove(&mut self, pos: usize) -> Outgoing {
        let out = self.outbox.remove(pos).expect("position is in range");
        self.outbox_bytes -= out.message.len();
        out
    }

    fn enqueue(&mut self, message: Message, reply: Option<ReplyTx>) -> Result<String, Error> {
        let size = message.len();
        let full = self.outbox.len() >= self.options.max_queued_messages
            || (!self.outbox.is_empty()
                && self.outbox_bytes + size > self.options.max_queued_bytes);
        if full {
            return Err(Error::QueueFull);
        }
        let id = format!("{}-{}", self.key_prefix, self.next_key);
        self.next_key += 1;
        self.outbox_bytes += size;
        self.outbox.push_back(Outgoing {
            id: id.clone(),
            message,
            reply,
            written: false,
            resend_at: None,
            refusals: 0,
        });
        Ok(id)
    }

    fn cancel(&mut self, id: &str) {
        if let Some(pos) = self.outbox.iter().position(|o| o.id == id) {
            if self.outbox[pos].written {
                self.outbox[pos].reply = None;
            } else {
                self.remove(pos);
            }
        }
    }

    /// A command while no connection is ready; `Some` ends the phase.
    fn offline_command(&mut self, cmd: Option<Command>) -> Option<Outcome> {
        match cmd {
            None => Some(Outcome::Stop(None)),
            Some(Command::Close { done }) => {
                self.close_waiters.push(done);
                Some(Outcome::Stop(None))
            }
            Some(Command::Cancel { id }) => {
                self.cancel(&id);
                None
            }
            Some(Command::Send {
                message,
                reply,
                accepted,
            }) => {
                let _ = accepted.send(self.enqueue(message, reply));
                None
            }
        }
    }

    async fn online_command(
        &mut self,
        cmd: Option<Command>,
        link: &mut Link,
        stream: &mut Stream,
    ) -> Result<(), Outcome> {
        match cmd {
            Some(Command::Send {
                message,
                reply,
                accepted,
            }) => {
                let queued = self.enqueue(message, reply);
                let ok = queued.is_ok();
                let written = if ok {
                    self.flush(link, false).await
                } else {
                    Ok(())
                };
                // Answered after the write, so a fast sender meets the socket's backpressure.
                let _ = accepted.send(queued);
                written
            }
            Some(Command::Cancel { id }) => {
                self.cancel(&id);
                Ok(())
            }
            Some(Command::Close { done }) => {
                self.close_waiters.push(done);
                Err(close_link(link, stream).await)
            }
            None => Err(close_link(link, stream).await),
        }
    }

    async fn set_state(&mut self, state: State) {
        if self.state.send_replace(state) != state {
            self.emit(Event::StateChanged(state)).await;
        }
    }

    async fn emit(&mut self, event: Event) {
        // A dropped receiver means the application gave events up (`Client::into_sender`).
        let _ = self.events.send(event).await;
    }

    async fn finish(mut self, end: Option<Error>) {
        if let Some(error) = &end {
            tracing::warn!(%error, "the client stops");
        }
        // From here on nothing waits for the application to read events: an application that
        // stopped reading must still see `close()` return.
        let prior = self.state.send_replace(State::Disconnected);
        if let Some(error) = &end {
            let _ = self.events.try_send(Event::Error(error.clone()));
        }
        if prior != State::Disconnected {
            let _ = self
                .events
                .try_send(Event::StateChanged(State::Disconnected));
        }
        let error = end.unwrap_or(Error::Closed);
        for out in self.outbox.drain(..) {
            if let Some(reply) = out.reply {
                let _ = reply.send(Err(error.clone()));
            }
        }
        self.commands.close();
        while let Ok(cmd) = self.commands.try_recv() {
            match cmd {
                Command::Send { accepted, .. } => {
                    let _ = accepted.send(Err(Error::Closed));
                }
                Command::Close { done } => self.close_waiters.push(done),
                Command::Cancel { .. } => {}
            }
        }
        for done in self.close_waiters.drain(..) {
            let _ = done.send(());
        }
    }
}

/// Closes with 1000 and waits briefly for the host's Close frame.
async fn close_link(link: &mut Link, stream: &mut Stream) -> Outcome {
    let close = CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    };
    if link.write(WsMessage::Close(Some(close))).await.is_ok() {
        let drain = async { while let Some(Ok(_)) = stream.next().await {} };
        let _ = tokio::time::timeout(CLOSE_GRACE, drain).await;
    }
    Outcome::Stop(None)
}

/// Makes one connection attempt: token, request, handshake, and the subprotocol check.
async fn open(options: Arc<Options>, resume: Option<(u64, String)>) -> Result<Ws, Error> {
    if let Some(e) = &options.header_error {
        return Err(Error::InvalidOptions(e.clone()));
    }
    // tungstenite would find out only after the TCP connection, and report it as a URL error.
    if !cfg!(feature = "tls")
        && options
            .url
            .get(..6)
            .is_some_and(|s| s.eq_ignore_ascii_case("wss://"))
    {
        return Err(Error::InvalidOptions(
            "wss:// URLs need the crate's `tls` feature".to_owned(),
        ));
    }
    let mut url = options.url.clone();
    let mut headers = options.headers.clone();
    let mut protocols = Vec::new();
    if options.reliable {
        protocols.push(RELIABLE.to_owned());
        if let Some((last_seq, token)) = &resume {
            protocols.push(frame::resume_entry(*last_seq, token));
        }
    }
    if let Some((provider, placement)) = &options.token {
        let token = provider().await.map_err(|e| Error::Token(e.to_string()))?;
        let bad_token =
            || Error::Token("the token has characters its placement cannot carry".into());
        match placement {
            TokenPlacement::Header { name, prefix } => {
                let value =
                    HeaderValue::try_from(format!("{prefix}{token}")).map_err(|_| bad_token())?;
                headers.insert(name.clone(), value);
            }
            TokenPlacement::Query { parameter } => append_query(&mut url, parameter, &token),
            TokenPlacement::Subprotocol { marker } => {
                if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
                    return Err(bad_token());
                }
                protocols.push(marker.clone());
                protocols.push(token);
            }
        }
    }
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| Error::InvalidOptions(e.to_string()))?;
    request.headers_mut().extend(headers);
    if !protocols.is_empty() {
        let value = HeaderValue::try_from(protocols.join(", "))
            .map_err(|_| Error::InvalidOptions("invalid subprotocol".into()))?;
        request.headers_mut().insert(SEC_WEBSOCKET_PROTOCOL, value);
    }
    let (ws, response) = connect_async(request)
        .await
        .map_err(|e| handshake_error(e, options.reliable))?;
    if options.reliable {
        let selected = response
            .headers()
            .get(SEC_WEBSOCKET_PROTOCOL)
            .and_then(|v| v.to_str().ok());
        // Without the selection the host speaks plain WebSocket, and envelopes must not be sent
        // (PROTOCOL.md section 1.3).
        if selected != Some(RELIABLE) {
            return Err(Error::ReliableNotSupported);
        }
    }
    Ok(ws)
}

fn handshake_error(error: tungstenite::Error, reliable: bool) -> Error {
    match error {
        tungstenite::Error::Http(response) => match response.status().as_u16() {
            status @ (401 | 403) => Error::Unauthorized { status },
            status => Error::Connect(format!("the handshake was refused with HTTP {status}")),
        },
        tungstenite::Error::Protocol(ProtocolError::SecWebSocketSubProtocolError(_))
            if reliable =>
        {
            Error::ReliableNotSupported
        }
        tungstenite::Error::Url(e) => Error::InvalidOptions(e.to_string()),
        e => Error::Connect(e.to_string()),
    }
}

/// Appends `name=value` to the URL's query, percent-encoding both.
fn append_query(url: &mut String, name: &str, value: &str) {
    url.push(if url.contains('?') { '&' } else { '?' });
    percent_encode(url, name);
    url.push('=');
    percent_encode(url, value);
}

fn percent_encode(out: &mut String, s: &str) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_tokens_are_appended_and_encoded() {
        let mut url = "ws://h/dev".to_owned();
        append_query(&mut url, "token", "a b+c/=");
        assert_eq!(url, "ws://h/dev?token=a%20b%2Bc%2F%3D");
        let mut url = "ws://h/dev?x=1".to_owned();
        append_query(&mut url, "token", "eyJ.x-y_z");
        assert_eq!(url, "ws://h/dev?x=1&token=eyJ.x-y_z");
    }
}
