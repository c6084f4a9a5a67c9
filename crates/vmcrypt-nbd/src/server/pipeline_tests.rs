//! Tests of how a connection runs many requests: small ones inline with their replies
//! batched (see `pace` and `outbox`), slow ones on the blocking pool.
use super::*;
use std::time::{Duration, Instant};

/// Read one structured chunk from a read half.
async fn chunk<R: AsyncReadExt + Unpin>(r: &mut R) -> (u16, u64, Vec<u8>) {
    assert_eq!(r.read_u32().await.unwrap(), STRUCTURED_REPLY_MAGIC);
    let flags = r.read_u16().await.unwrap();
    assert_eq!(flags & REPLY_FLAG_DONE, REPLY_FLAG_DONE);
    let ty = r.read_u16().await.unwrap();
    let cookie = r.read_u64().await.unwrap();
    let len = r.read_u32().await.unwrap();
    let mut d = vec![0u8; len as usize];
    r.read_exact(&mut d).await.unwrap();
    (ty, cookie, d)
}

/// The byte at `i` of block `b` as the writes below leave it.
fn pattern(b: u64, i: usize) -> u8 {
    (b as usize * 7 + i) as u8
}

/// A client that writes thousands of requests before it reads a single reply (more
/// than the socket buffers hold either way) is served: the server does not stop
/// reading requests while the client is not reading replies. Every WRITE lands and
/// every READ returns the data, whatever order the replies come in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_no_reply_before_sending_all_requests_is_served() {
    const BLOCKS: u64 = 512;
    const BS: usize = 4096;
    const READS: u64 = 20_000;
    let (export, node) = mem_export("", vec![0u8; BLOCKS as usize * BS], false);
    let (_dir, path, stop, handle) = start(vec![export]).await;
    let (c, _, _) = Client::open(&path, "").await;
    let (mut rd, mut wr) = c.s.into_split();
    let sender = tokio::spawn(async move {
        let mut buf = Vec::new();
        for b in 0..BLOCKS {
            let r = Request {
                flags: 0,
                kind: CMD_WRITE,
                cookie: b,
                offset: b * BS as u64,
                length: BS as u32,
            };
            buf.extend_from_slice(&r.encode());
            buf.extend((0..BS).map(|i| pattern(b, i)));
        }
        for n in 0..READS {
            let r = Request {
                flags: 0,
                kind: CMD_READ,
                cookie: BLOCKS + n,
                offset: (n % BLOCKS) * BS as u64 + 1000,
                length: 1024,
            };
            buf.extend_from_slice(&r.encode());
        }
        wr.write_all(&buf).await.unwrap();
        wr
    });
    let sent = tokio::time::timeout(Duration::from_secs(60), sender)
        .await
        .expect("the server stopped reading requests")
        .unwrap();
    let mut writes_done = 0;
    let mut reads = std::collections::BTreeMap::new();
    let replies = async {
        for _ in 0..BLOCKS + READS {
            let (ty, cookie, d) = chunk(&mut rd).await;
            if cookie < BLOCKS {
                assert_eq!(ty, REPLY_TYPE_NONE);
                writes_done += 1;
            } else {
                assert_eq!((ty, d.len()), (REPLY_TYPE_OFFSET_DATA, 8 + 1024));
                reads.insert(cookie, d);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), replies)
        .await
        .expect("replies stopped");
    assert_eq!((writes_done, reads.len() as u64), (BLOCKS, READS));
    let data = node.snapshot();
    for b in 0..BLOCKS {
        let block = &data[b as usize * BS..][..BS];
        assert!(block.iter().enumerate().all(|(i, &v)| v == pattern(b, i)));
    }
    // Reads sent after all the writes, on one connection: NBD does not order them, so
    // each sees its block either all written or not at all.
    for (cookie, d) in reads {
        let b = (cookie - BLOCKS) % BLOCKS;
        let offset = u64::from_be_bytes(d[..8].try_into().unwrap());
        assert_eq!(offset, b * BS as u64 + 1000);
        let want: Vec<u8> = (1000..2024).map(|i| pattern(b, i)).collect();
        assert!(
            d[8..] == want[..] || d[8..].iter().all(|&v| v == 0),
            "read {cookie}"
        );
    }
    drop(sent);
    stop.send(()).unwrap();
    handle.await.unwrap().unwrap();
}

/// A node that takes `delay` for every read.
struct SlowReads {
    inner: MemDriver,
    delay: Duration,
}

impl BlockDriver for SlowReads {
    fn driver_name(&self) -> &'static str {
        "slow-reads"
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        std::thread::sleep(self.delay);
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
    fn is_read_only(&self) -> bool {
        false
    }
}

/// Small reads from a node that blocks still run side by side (on the blocking pool),
/// not one after the other on the connection's task, and other clients are served
/// meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_requests_to_a_slow_node_run_in_parallel() {
    const N: u64 = 16;
    let delay = Duration::from_millis(100);
    let node = Arc::new(SlowReads {
        inner: MemDriver::new(vec![3u8; 1 << 20]),
        delay,
    });
    let export = Export {
        name: String::new(),
        node,
        read_only: false,
        description: String::new(),
    };
    let (_dir, path, stop, handle) = start(vec![export]).await;
    let (mut c, _, _) = Client::open(&path, "").await;
    for round in 0..3 {
        let t0 = Instant::now();
        for cookie in 0..N {
            c.request(CMD_READ, 0, cookie, cookie * 4096, 4096).await;
        }
        for _ in 0..N {
            let (_, ty, _, d) = c.chunk().await;
            assert_eq!((ty, d.len()), (REPLY_TYPE_OFFSET_DATA, 8 + 4096));
        }
        let took = t0.elapsed();
        assert!(
            took < delay * N as u32 / 2,
            "round {round}: {N} reads of {delay:?} each took {took:?}"
        );
    }
    stop.send(()).unwrap();
    handle.await.unwrap().unwrap();
}
