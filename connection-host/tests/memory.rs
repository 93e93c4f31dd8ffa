//! The heap an idle WebSocket connection holds, counted by this test binary's own allocator.
//!
//! BENCHMARKS.md's `idle-memory` scenario measures the release host's RSS; this guard measures the
//! live heap of an in-process host (debug build) over a few hundred connections, so a regression
//! in what each connection keeps (its task, buffers, handle, registry entry) fails `cargo test`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The system allocator, counting the bytes currently allocated.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to `System`; only a counter is updated beside it.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` was allocated by `System` with `layout`, as the caller guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: as for `dealloc`, and `new_size` is the caller's valid new size.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The default `limits.read_buffer_size`, which every open connection holds.
const READ_BUFFER: usize = 4096;
/// What an idle connection may hold beside its read buffer: its task (the future of the open
/// connection only, not of the handshake), its handle and registry entry, its context, and the
/// socket's registration (this counts the test client's side too). About 3.6 KiB in a debug build
/// today; when the connection was served inside the handshake's task it was 16.4 KiB.
const OTHER_STATE: usize = 6 * 1024;

/// Opens a WebSocket with a raw socket (no client-side buffers to count) and waits until the
/// host's connection task answers a Ping, so the connection is settled: handshake over, task idle.
async fn open(addr: SocketAddr) -> TcpStream {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /dev HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         User-Agent: memory-test\r\n\r\n"
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        socket.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    // A masked Ping with no payload; the Pong has none either.
    socket.write_all(&[0x89, 0x80, 1, 2, 3, 4]).await.unwrap();
    let mut pong = [0u8; 2];
    socket.read_exact(&mut pong).await.unwrap();
    assert_eq!(pong, [0x8a, 0x00]);
    socket
}

// One thread: when a client has its Pong, the handshake's task has already ended and been freed.
#[tokio::test(flavor = "current_thread")]
async fn an_idle_connection_holds_its_read_buffer_and_little_else() {
    const WARM: usize = 50;
    const N: usize = 400;
    let mut config = connection_host::Config::default();
    // Every connection comes from 127.0.0.1 within a fraction of a second.
    config.limits.connections_per_second = 0;
    config.limits.connections_per_ip = 0;
    assert_eq!(config.limits.read_buffer_size, READ_BUFFER);
    let listener = connection_host::bind(([127, 0, 0, 1], 0).into(), 1024).unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let host = tokio::spawn(connection_host::run(config, listener, async move {
        let _ = stopped.await;
    }));
    // The first connections grow the runtime's and the registry's tables; measure after them.
    let mut warm = Vec::with_capacity(WARM);
    for _ in 0..WARM {
        warm.push(open(addr).await);
    }
    let mut clients = Vec::with_capacity(N);
    let before = LIVE.load(Ordering::Relaxed);
    for _ in 0..N {
        clients.push(open(addr).await);
    }
    let per_connection = LIVE.load(Ordering::Relaxed).saturating_sub(before) / N;
    eprintln!("heap per idle connection: {per_connection} bytes");
    assert!(
        per_connection <= READ_BUFFER + OTHER_STATE,
        "an idle connection holds {per_connection} bytes of heap; at most {} expected \
         (the {READ_BUFFER}-byte read buffer and {OTHER_STATE} bytes of other state)",
        READ_BUFFER + OTHER_STATE
    );
    drop(clients);
    drop(warm);
    let _ = stop.send(());
    host.await.unwrap().unwrap();
}
