//! Tests of the server's limits: the server-wide in-flight budget under clients that
//! never read their replies, making clients beyond `--shared` wait, and the idle and
//! handshake timeouts.
use super::*;
use std::time::{Duration, Instant};

const MIB: u32 = 1 << 20;

/// Wait until the socket is closed by the server; how long that took.
async fn closed_within(c: &mut Client, limit: Duration) -> Duration {
    let t0 = Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(limit, c.s.read_to_end(&mut rest))
        .await
        .expect("the server did not close the connection")
        .ok();
    t0.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_replies_stay_within_the_budget() {
    let (export, _) = mem_export("", vec![3u8; 4 * MIB as usize], true);
    let budget = 8 * MIB;
    let server = Server::new(vec![export]).unwrap().max_inflight(budget);
    let inflight = server.inflight();
    let (_dir, path, stop, handle) = spawn(server);
    let mut greedy = Vec::new();
    for _ in 0..10 {
        let (mut c, _, _) = Client::open(&path, "").await;
        for cookie in 0..24 {
            c.request(CMD_READ, 0, cookie, 0, 4 * MIB).await;
        }
        greedy.push(c);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(inflight.peak() > 0, "nothing was counted");
    assert!(
        inflight.peak() <= u64::from(budget),
        "in flight peaked at {} bytes, over the {budget}-byte budget",
        inflight.peak()
    );
    drop(greedy);
    let t0 = Instant::now();
    while inflight.used() > 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "budget not given back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(()).unwrap();
    handle.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_bigger_than_the_budget_still_runs() {
    let (export, _) = mem_export("", vec![7u8; 2 * MIB as usize], true);
    let server = Server::new(vec![export]).unwrap().max_inflight(4096);
    let (_dir, path, stop, handle) = spawn(server);
    let (mut c, _, _) = Client::open(&path, "").await;
    c.request(CMD_READ, 0, 1, 0, 2 * MIB).await;
    let (_, ty, cookie, d) = c.chunk().await;
    assert_eq!(
        (ty, cookie, d.len()),
        (REPLY_TYPE_OFFSET_DATA, 1, 8 + 2 * MIB as usize)
    );
    stop.send(()).unwrap();
    handle.await.unwrap().unwrap();
}

/// A client beyond `shared` is not greeted while the slot is taken, for longer than
/// any short wait, and is served once the first client leaves (qemu-nbd's behaviour).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_beyond_shared_waits_for_a_slot() {
    let (export, _) = mem_export("", vec![0u8; 512], false);
    let server = Server::new(vec![export]).unwrap().shared(1);
    let (_dir, path, stop, handle) = spawn(server);
    let (first, _, _) = Client::open(&path, "").await;
    let mut extra = Client::connect(&path).await;
    let mut greet = [0u8; 18];
    let early = tokio::time::timeout(Duration::from_millis(2500), extra.s.read_exact(&mut greet));
    assert!(
        early.await.is_err(),
        "greeted while the only slot was taken"
    );
    drop(first);
    let later = tokio::time::timeout(Duration::from_secs(5), extra.s.read_exact(&mut greet));
    later
        .await
        .expect("not greeted after the first client left")
        .unwrap();
    assert_eq!(&greet[..8], b"NBDMAGIC");
    stop.send(()).unwrap();
    handle.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_client_is_disconnected() {
    let (export, _) = mem_export("", vec![0u8; 512], false);
    let idle = Duration::from_millis(300);
    let server = Server::new(vec![export]).unwrap().idle_timeout(Some(idle));
    let (_dir, path, stop, handle) = spawn(server);
    let (mut busy, _, _) = Client::open(&path, "").await;
    let (mut quiet, _, _) = Client::open(&path, "").await;
    // A client that keeps sending requests stays connected past the timeout.
    for cookie in 0..6 {
        busy.request(CMD_READ, 0, cookie, 0, 512).await;
        assert_eq!(busy.chunk().await.2, cookie);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = closed_within(&mut quiet, Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(2), "closed after {took:?}");
    stop.send(()).unwrap();
    handle.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handshake_timeout_is_an_option() {
    let (export, _) = mem_export("", vec![0u8; 512], false);
    let server = Server::new(vec![export])
        .unwrap()
        .handshake_timeout(Duration::from_millis(300));
    let (_dir, path, stop, handle) = spawn(server);
    let mut c = Client::connect(&path).await;
    let mut greet = [0u8; 18];
    c.s.read_exact(&mut greet).await.unwrap();
    let took = closed_within(&mut c, Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(2), "closed after {took:?}");
    stop.send(()).unwrap();
    handle.await.unwrap().unwrap();
}
