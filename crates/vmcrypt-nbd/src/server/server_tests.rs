//! Server tests over a Unix socket with a minimal client written from the spec, against
//! in-memory nodes: negotiation, I/O, block status, and hostile clients that must end
//! only their own connection.
use super::*;
use crate::proto::transmission::Request;
use crate::proto::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use vmcrypt_block::drivers::mem::MemDriver;

struct Client {
    s: UnixStream,
}

impl Client {
    async fn connect(path: &Path) -> Client {
        for _ in 0..100 {
            if let Ok(s) = UnixStream::connect(path).await {
                return Client { s };
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("server did not start");
    }

    async fn u32(&mut self) -> u32 {
        self.s.read_u32().await.unwrap()
    }

    async fn option(&mut self, opt: u32, data: &[u8]) -> Vec<(u32, Vec<u8>)> {
        self.s.write_u64(IHAVEOPT).await.unwrap();
        self.s.write_u32(opt).await.unwrap();
        self.s.write_u32(data.len() as u32).await.unwrap();
        self.s.write_all(data).await.unwrap();
        let mut replies = Vec::new();
        loop {
            assert_eq!(self.s.read_u64().await.unwrap(), REPLY_MAGIC);
            assert_eq!(self.u32().await, opt);
            let ty = self.u32().await;
            let len = self.u32().await;
            let mut d = vec![0u8; len as usize];
            self.s.read_exact(&mut d).await.unwrap();
            replies.push((ty, d));
            if ty == REP_ACK || ty & (1 << 31) != 0 {
                return replies;
            }
        }
    }

    /// Handshake with structured replies, base:allocation and GO on `name`.
    async fn open(path: &Path, name: &str) -> (Client, u64, u16) {
        let mut c = Client::connect(path).await;
        let mut greet = [0u8; 18];
        c.s.read_exact(&mut greet).await.unwrap();
        assert_eq!(&greet[..16], b"NBDMAGICIHAVEOPT");
        c.s.write_u32(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES)
            .await
            .unwrap();
        assert_eq!(c.option(OPT_STRUCTURED_REPLY, &[]).await[0].0, REP_ACK);
        let mut meta = (name.len() as u32).to_be_bytes().to_vec();
        meta.extend(name.as_bytes());
        meta.extend(1u32.to_be_bytes());
        meta.extend((BASE_ALLOCATION.len() as u32).to_be_bytes());
        meta.extend(BASE_ALLOCATION.as_bytes());
        let r = c.option(OPT_SET_META_CONTEXT, &meta).await;
        assert_eq!(r[0].0, REP_META_CONTEXT);
        let mut go = (name.len() as u32).to_be_bytes().to_vec();
        go.extend(name.as_bytes());
        go.extend(0u16.to_be_bytes());
        let r = c.option(OPT_GO, &go).await;
        let export = r
            .iter()
            .find(|(t, d)| *t == REP_INFO && d[..2] == [0, 0])
            .unwrap();
        let size = u64::from_be_bytes(export.1[2..10].try_into().unwrap());
        let flags = u16::from_be_bytes(export.1[10..12].try_into().unwrap());
        (c, size, flags)
    }

    async fn request(&mut self, kind: u16, flags: u16, cookie: u64, offset: u64, length: u32) {
        let r = Request {
            flags,
            kind,
            cookie,
            offset,
            length,
        };
        self.s.write_all(&r.encode()).await.unwrap();
    }

    /// Read one structured chunk: (flags, type, cookie, payload).
    async fn chunk(&mut self) -> (u16, u16, u64, Vec<u8>) {
        assert_eq!(self.u32().await, STRUCTURED_REPLY_MAGIC);
        let flags = self.s.read_u16().await.unwrap();
        let ty = self.s.read_u16().await.unwrap();
        let cookie = self.s.read_u64().await.unwrap();
        let len = self.u32().await;
        let mut d = vec![0u8; len as usize];
        self.s.read_exact(&mut d).await.unwrap();
        (flags, ty, cookie, d)
    }
}

fn mem_export(name: &str, data: Vec<u8>, read_only: bool) -> (Export, Arc<MemDriver>) {
    let node = Arc::new(MemDriver::new(data));
    let export = Export {
        name: name.into(),
        node: node.clone(),
        read_only,
        description: String::new(),
    };
    (export, node)
}

async fn start(
    exports: Vec<Export>,
) -> (
    tempfile::TempDir,
    PathBuf,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<()>>,
) {
    spawn(Server::new(exports).unwrap())
}

/// Serve `server` (persistent) on a socket in a new temporary directory.
fn spawn(
    server: Server,
) -> (
    tempfile::TempDir,
    PathBuf,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<()>>,
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nbd.sock");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let p = path.clone();
    let h = tokio::spawn(async move {
        server
            .persistent(true)
            .serve_unix(&p, async {
                let _ = rx.await;
            })
            .await
    });
    (dir, path, tx, h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_write_status_and_concurrent_requests() {
    let (export, node) = mem_export("", (0..8192u32).map(|i| i as u8).collect(), false);
    let (_dir, path, stop, handle) = start(vec![export]).await;
    let (mut c, size, flags) = Client::open(&path, "").await;
    assert_eq!(size, 8192);
    assert_eq!(flags & FLAG_READ_ONLY, 0);
    // Several requests in flight before reading any reply.
    c.request(CMD_WRITE, CMD_FLAG_FUA, 1, 100, 4).await;
    c.s.write_all(&[9, 9, 9, 9]).await.unwrap();
    for cookie in 2..6 {
        c.request(CMD_READ, 0, cookie, 0, 512).await;
    }
    c.request(CMD_BLOCK_STATUS, 0, 6, 0, 8192).await;
    c.request(CMD_READ, 0, 7, 8000, 1000).await; // out of range
    c.request(99, 0, 8, 0, 0).await; // unknown command
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..8 {
        let (fl, ty, cookie, d) = c.chunk().await;
        assert_eq!(fl & REPLY_FLAG_DONE, REPLY_FLAG_DONE);
        seen.insert(cookie, (ty, d));
    }
    assert_eq!(seen[&1].0, REPLY_TYPE_NONE);
    for cookie in 2..6 {
        let (ty, d) = &seen[&cookie];
        assert_eq!(*ty, REPLY_TYPE_OFFSET_DATA);
        assert_eq!(d.len(), 8 + 512);
    }
    assert_eq!(
        seen[&6],
        (
            REPLY_TYPE_BLOCK_STATUS,
            [1u32, 8192, 0]
                .iter()
                .flat_map(|v| v.to_be_bytes())
                .collect()
        )
    );
    assert_eq!(seen[&7].0, REPLY_TYPE_ERROR);
    assert_eq!(&seen[&7].1[..4], &22u32.to_be_bytes());
    assert_eq!(seen[&8].0, REPLY_TYPE_ERROR);
    assert_eq!(&node.snapshot()[100..104], &[9, 9, 9, 9]);
    c.request(CMD_DISC, 0, 9, 0, 0).await;
    let mut rest = Vec::new();
    c.s.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    stop.send(()).unwrap();
    handle.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_end_only_their_own_connection() {
    let (export, _node) = mem_export("disk", vec![5u8; 4096], true);
    let (_dir, path, stop, handle) = start(vec![export]).await;
    // Garbage instead of client flags and options.
    let mut bad = Client::connect(&path).await;
    bad.s.write_all(&[0xff; 64]).await.unwrap();
    let mut rest = Vec::new();
    let _ = bad.s.read_to_end(&mut rest).await;
    // A good handshake, then a request with a broken magic.
    let (mut bad, _, flags) = Client::open(&path, "disk").await;
    assert_ne!(flags & FLAG_READ_ONLY, 0);
    bad.request(CMD_WRITE, 0, 1, 0, 4).await;
    bad.s.write_all(&[1, 2, 3, 4]).await.unwrap();
    let (_, ty, _, d) = bad.chunk().await;
    assert_eq!((ty, &d[..4]), (REPLY_TYPE_ERROR, &1u32.to_be_bytes()[..]));
    bad.s
        .write_all(b"this is not an NBD request header")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = bad.s.read_to_end(&mut rest).await;
    // The server still serves a well-behaved client.
    let (mut good, size, _) = Client::open(&path, "disk").await;
    assert_eq!(size, 4096);
    good.request(CMD_READ, 0, 3, 4000, 96).await;
    let (_, ty, cookie, d) = good.chunk().await;
    assert_eq!((ty, cookie), (REPLY_TYPE_OFFSET_DATA, 3));
    assert_eq!(&d[8..], &[5u8; 96][..]);
    stop.send(()).unwrap();
    handle.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_persistent_server_exits_after_its_client() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let (export, _) = mem_export("", vec![0u8; 512], false);
    let server = Server::new(vec![export]).unwrap();
    let p = path.clone();
    let h = tokio::spawn(async move { server.serve_unix(&p, std::future::pending()).await });
    let (mut c, _, _) = Client::open(&path, "").await;
    c.request(CMD_DISC, 0, 1, 0, 0).await;
    drop(c);
    tokio::time::timeout(std::time::Duration::from_secs(10), h)
        .await
        .expect("server should exit after the last client")
        .unwrap()
        .unwrap();
    assert!(!path.exists(), "socket file is removed");
}

#[test]
fn duplicate_export_names_are_refused() {
    let (a, _) = mem_export("x", vec![0u8; 512], false);
    let (b, _) = mem_export("x", vec![0u8; 512], false);
    assert!(Server::new(vec![a, b]).is_err());
    assert!(Server::new(vec![]).is_err());
}

/// A memory node whose writes take `delay` and which counts flushes, to hold requests
/// in flight while the server is told to stop.
struct SlowNode {
    inner: MemDriver,
    delay: std::time::Duration,
    flushes: std::sync::atomic::AtomicUsize,
}

impl BlockDriver for SlowNode {
    fn driver_name(&self) -> &'static str {
        "slow"
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        std::thread::sleep(self.delay);
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> Result<()> {
        self.flushes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
    fn is_read_only(&self) -> bool {
        false
    }
}

/// Serve one SlowNode export with grace period `grace`; the client has sent a 4-byte
/// WRITE at offset 8 and the server is running it when this returns.
async fn slow_server_with_write_in_flight(
    delay_ms: u64,
    grace: std::time::Duration,
) -> (
    tempfile::TempDir,
    Client,
    Arc<SlowNode>,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<()>>,
) {
    let node = Arc::new(SlowNode {
        inner: MemDriver::new(vec![0u8; 4096]),
        delay: std::time::Duration::from_millis(delay_ms),
        flushes: Default::default(),
    });
    let export = Export {
        name: String::new(),
        node: node.clone(),
        read_only: false,
        description: String::new(),
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nbd.sock");
    let server = Server::new(vec![export])
        .unwrap()
        .persistent(true)
        .grace(grace);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let p = path.clone();
    let h = tokio::spawn(async move {
        server
            .serve_unix(&p, async {
                let _ = rx.await;
            })
            .await
    });
    let (mut c, _, _) = Client::open(&path, "").await;
    c.request(CMD_WRITE, 0, 1, 8, 4).await;
    c.s.write_all(&[4, 3, 2, 1]).await.unwrap();
    // Let the server read the request and start the slow write.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    (dir, c, node, tx, h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_answers_in_flight_requests_then_flushes() {
    let (dir, mut c, node, stop, handle) =
        slow_server_with_write_in_flight(600, DEFAULT_GRACE).await;
    let flushes_before = node.flushes.load(std::sync::atomic::Ordering::SeqCst);
    stop.send(()).unwrap();
    let (fl, ty, cookie, _) = c.chunk().await;
    assert_eq!((fl, ty, cookie), (REPLY_FLAG_DONE, REPLY_TYPE_NONE, 1));
    // Then the server closes the connection without reading anything more.
    let mut rest = Vec::new();
    c.s.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    handle.await.unwrap().unwrap();
    assert_eq!(&node.inner.snapshot()[8..12], &[4, 3, 2, 1]);
    assert!(node.flushes.load(std::sync::atomic::Ordering::SeqCst) > flushes_before);
    assert!(!dir.path().join("nbd.sock").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_aborts_requests_that_outlast_the_grace_period() {
    let grace = std::time::Duration::from_millis(200);
    let (_dir, _c, _node, stop, handle) = slow_server_with_write_in_flight(1500, grace).await;
    let t0 = std::time::Instant::now();
    stop.send(()).unwrap();
    handle.await.unwrap().unwrap();
    assert!(
        t0.elapsed() < std::time::Duration::from_millis(1200),
        "serve waited {:?} for a request past the {grace:?} grace period",
        t0.elapsed()
    );
}

#[path = "limits_tests.rs"]
mod limits;

#[path = "pipeline_tests.rs"]
mod pipeline;
