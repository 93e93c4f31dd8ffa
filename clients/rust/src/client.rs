//! The handles an application holds: [`Client`] (events and state) and [`Sender`] (outgoing).

use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use crate::driver::{Command, Driver};
use crate::{Error, Event, Message, Options, State};

/// A connection to a WebSocket API that reconnects by itself.
///
/// [`Client::connect`] starts a background task that owns the connection; this handle reads its
/// [`Event`]s and [`State`], and sends through its [`Sender`] (reachable by `Deref`, and
/// clonable for other tasks with [`Client::sender`]). The task ends after [`Sender::close`],
/// after a terminal error, or when the `Client` and every `Sender` are dropped (which closes the
/// connection with 1000, like `close`).
#[derive(Debug)]
pub struct Client {
    sender: Sender,
    events: mpsc::Receiver<Event>,
}

impl Client {
    /// Starts connecting in the background and returns at once; messages sent before the
    /// connection is up wait in the offline queue. Must be called inside a tokio runtime.
    pub fn connect(options: Options) -> Client {
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (event_tx, event_rx) = mpsc::channel(options.event_capacity);
        let (state_tx, state_rx) = watch::channel(State::Connecting);
        let sender = Sender {
            commands: cmd_tx,
            state: state_rx,
            reliable: options.reliable,
            request_timeout: options.request_timeout,
        };
        tokio::spawn(Driver::new(options, cmd_rx, event_tx, state_tx).run());
        Client {
            sender,
            events: event_rx,
        }
    }

    /// The next event; `None` once the client has ended and every event was read.
    ///
    /// Events queue up to [`Options::event_capacity`]; while the queue is full the client stops
    /// reading from the connection, replies included. So read events in a task of their own
    /// (and send from others through [`Client::sender`]), or give them up with
    /// [`Client::into_sender`].
    pub async fn recv(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// A clonable handle to send from other tasks.
    pub fn sender(&self) -> Sender {
        self.sender.clone()
    }

    /// Keeps only the sending side: events are discarded from then on.
    pub fn into_sender(self) -> Sender {
        self.sender
    }
}

impl std::ops::Deref for Client {
    type Target = Sender;

    fn deref(&self) -> &Sender {
        &self.sender
    }
}

/// The sending side of a [`Client`]: cheap to clone, usable from any task.
#[derive(Debug, Clone)]
pub struct Sender {
    commands: mpsc::UnboundedSender<Command>,
    state: watch::Receiver<State>,
    reliable: bool,
    request_timeout: Duration,
}

impl Sender {
    /// Sends a message without waiting for an answer.
    ///
    /// Returns once the client has taken the message: written to the connection, or queued
    /// while it is down. In reliable mode it returns the message's idempotency key (the handler's
    /// `requestContext.idempotencyKey`); the client keeps the message until its `reply` arrives
    /// and sends it again after a reconnect, and an error reply is reported as [`Event::Error`]
    /// with [`Error::Reply`] carrying that key. In plain mode it returns `None`, and a message
    /// written just before the connection breaks can be lost, as with any WebSocket.
    ///
    /// Fails with [`Error::QueueFull`] when the queue is at its bound, [`Error::Closed`] once the
    /// client has ended.
    pub async fn send(&self, message: impl Into<Message>) -> Result<Option<String>, Error> {
        let key = self.submit(message.into(), None).await?;
        Ok(self.reliable.then_some(key))
    }

    /// Sends a message and waits for its `reply` (reliable mode only), within
    /// [`Options::request_timeout`]. `Ok(None)` means the route accepted the message with
    /// nothing to return; an error reply is [`Error::Reply`].
    pub async fn request(&self, message: impl Into<Message>) -> Result<Option<Message>, Error> {
        self.request_timeout(message, self.request_timeout).await
    }

    /// As [`request`](Self::request), with its own timeout.
    ///
    /// On timeout (or when the returned future is dropped) a message that was never written to a
    /// connection is withdrawn; one that was written stays with the client until its reply,
    /// because the host may already have invoked it, and its reply is then discarded.
    pub async fn request_timeout(
        &self,
        message: impl Into<Message>,
        timeout: Duration,
    ) -> Result<Option<Message>, Error> {
        if !self.reliable {
            return Err(Error::NotReliable);
        }
        let message = message.into();
        let mut guard = None;
        let outcome = tokio::time::timeout(timeout, async {
            let (tx, rx) = oneshot::channel();
            let id = self.submit(message, Some(tx)).await?;
            guard = Some(CancelOnDrop {
                commands: self.commands.clone(),
                id,
                armed: true,
            });
            rx.await.unwrap_or(Err(Error::Closed))
        })
        .await;
        if let Some(guard) = guard.as_mut()
            && outcome.is_ok()
        {
            guard.armed = false;
        }
        outcome.unwrap_or(Err(Error::Timeout))
    }

    /// Closes the connection with code 1000 (which ends a reliable session: the host runs
    /// `$disconnect`) and stops reconnecting. Unanswered requests fail with [`Error::Closed`].
    /// Returns when the client has ended.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Close { done: tx }).is_ok() {
            let _ = rx.await;
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        *self.state.borrow()
    }

    /// A receiver of state changes, for `changed()` / `wait_for()`.
    pub fn watch_state(&self) -> watch::Receiver<State> {
        self.state.clone()
    }

    /// Waits until the client is [`State::Connected`] (in reliable mode: has its `welcome`);
    /// fails with [`Error::Closed`] if it ends first.
    pub async fn connected(&self) -> Result<(), Error> {
        let mut state = self.state.clone();
        match state
            .wait_for(|s| matches!(s, State::Connected | State::Disconnected))
            .await
        {
            Ok(s) if *s == State::Connected => Ok(()),
            _ => Err(Error::Closed),
        }
    }

    async fn submit(
        &self,
        message: Message,
        reply: Option<oneshot::Sender<Result<Option<Message>, Error>>>,
    ) -> Result<String, Error> {
        let (accepted, rx) = oneshot::channel();
        self.commands
            .send(Command::Send {
                message,
                reply,
                accepted,
            })
            .map_err(|_| Error::Closed)?;
        rx.await.unwrap_or(Err(Error::Closed))
    }
}

/// Withdraws a request whose caller stopped waiting (timeout or a dropped future).
struct CancelOnDrop {
    commands: mpsc::UnboundedSender<Command>,
    id: String,
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let _ = self.commands.send(Command::Cancel {
            id: std::mem::take(&mut self.id),
        });
    }
}
