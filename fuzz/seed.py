#!/usr/bin/env python3
"""Build the seed corpora in fuzz/corpus/ from ../shared/vectors/ and qemu-img.

Run once from the fuzz/ directory (needs qemu-img); `cargo fuzz cmin` then trims them.
"""
import os, struct, subprocess, tempfile

V = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "vectors")
V = V if os.path.isdir(V) else "/work/shared/vectors"
C = "corpus"


def put(target, name, data):
    os.makedirs(os.path.join(C, target), exist_ok=True)
    with open(os.path.join(C, target, name), "wb") as f:
        f.write(data)


def head(path, n):
    with open(path, "rb") as f:
        return f.read(n)


def vec(*parts):
    return os.path.join(V, *parts)


luks1 = [vec("qemu", f) for f in sorted(os.listdir(vec("qemu"))) if f.startswith("luks1") and f.endswith((".luks", ".hdr"))]
luks1 += [vec("cryptsetup", f) for f in sorted(os.listdir(vec("cryptsetup"))) if f.startswith("luks1")]
for p in luks1:
    put("luks1_header", os.path.basename(p), head(p, 592))

luks2 = [vec("cryptsetup", f) for f in sorted(os.listdir(vec("cryptsetup"))) if f.startswith("luks2") and not f.endswith(".data")]
luks2.append(vec("qemu", "luks2-cryptsetup-negative.img"))
for p in luks2:
    b = head(p, 1 << 20)
    if b[:6] != b"LUKS\xba\xbe" or struct.unpack(">H", b[6:8])[0] != 2:
        continue
    hdr = struct.unpack(">Q", b[8:16])[0]
    put("luks2_json", os.path.basename(p), b[4096:hdr].rstrip(b"\0"))
for name in ["luks2-tokens.img", "luks2-reencrypt-initialized.img", "luks2-detached.hdr"]:
    b = head(vec("cryptsetup", name), 1 << 20)
    hdr = struct.unpack(">Q", b[8:16])[0]
    # Both copies, JSON areas cut after their text (the loader reads hdr_size bytes,
    # so keep the secondary at its offset and drop only the secondary's zero tail).
    put("luks2_load", name, b[: 2 * hdr].rstrip(b"\0"))

with tempfile.TemporaryDirectory() as d:
    def qimg(*args):
        subprocess.run(["qemu-img", *args], check=True, capture_output=True)

    def qio(img, fmt, *cmds):
        args = ["qemu-io", "-f", fmt]
        for c in cmds:
            args += ["-c", c]
        subprocess.run([*args, img], check=True, capture_output=True)

    imgs = {}
    p = os.path.join(d, "plain.qcow2")
    qimg("create", "-q", "-f", "qcow2", "-o", "cluster_size=512", p, "256K")
    qio(p, "qcow2", "write -P 0x11 0 3000", "write -z 8192 4096", "write -P 0x22 100000 700")
    imgs["plain512.qcow2"] = p
    p = os.path.join(d, "ext.qcow2")
    qimg("create", "-q", "-f", "qcow2", "-o", "cluster_size=16384,extended_l2=on", p, "256K")
    qio(p, "qcow2", "write -P 0x33 1000 5000", "write -z 32768 2048")
    imgs["extl2.qcow2"] = p
    p = os.path.join(d, "snap.qcow2")
    qimg("create", "-q", "-f", "qcow2", "-o", "cluster_size=4096,refcount_bits=4", p, "128K")
    qio(p, "qcow2", "write -P 0x44 0 9000")
    qimg("snapshot", "-c", "s1", p)
    qio(p, "qcow2", "write -P 0x55 4096 4096")
    qimg("bitmap", "--add", p, "b0")
    imgs["snap-bitmap.qcow2"] = p
    src = os.path.join(d, "src.raw")
    with open(src, "wb") as f:
        f.write(bytes((i // 7) % 251 for i in range(65536)))
    p = os.path.join(d, "comp.qcow2")
    qimg("convert", "-q", "-c", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=4096,compat=0.10", src, p)
    imgs["compressed-v2.qcow2"] = p
    p = os.path.join(d, "v1.qcow")
    qimg("create", "-q", "-f", "qcow", p, "128K")
    qio(p, "qcow", "write -P 0x66 3000 7000")
    imgs["v1.qcow"] = p
    for name, p in imgs.items():
        b = open(p, "rb").read()
        put("qcow2_driver", name, b)
        put("qcow2_header", name, b[:1024])
        if name == "plain512.qcow2":
            l1_off = struct.unpack(">Q", b[40:48])[0]
            l2_off = struct.unpack(">Q", b[l1_off:l1_off + 8])[0] & 0x00FFFFFFFFFFFE00
            put("qcow2_tables", "l1-l2-512", bytes([0x40]) + b[l1_off:l1_off + 64] + b[l2_off:l2_off + 256])
        if name == "extl2.qcow2":
            l1_off = struct.unpack(">Q", b[40:48])[0]
            l2_off = struct.unpack(">Q", b[l1_off:l1_off + 8])[0] & 0x00FFFFFFFFFFFE00
            put("qcow2_tables", "l2-extended-16k", bytes([0x45]) + b[l2_off:l2_off + 256])
        if name == "compressed-v2.qcow2":
            l1_off = struct.unpack(">Q", b[40:48])[0]
            l2_off = struct.unpack(">Q", b[l1_off:l1_off + 8])[0] & 0x00FFFFFFFFFFFE00
            put("qcow2_tables", "l2-compressed-4k", bytes([0x03]) + b[l2_off:l2_off + 256])
            rt = struct.unpack(">Q", b[48:56])[0]
            rb = struct.unpack(">Q", b[rt:rt + 8])[0]
            put("qcow2_tables", "refblock-16bit", bytes([0x43]) + b[rb:rb + 128])

for f in ["qcow2-legacy-aes.qcow2", "qcow2-luks-base.qcow2", "qcow2-luks-overlay.qcow2", "qcow1-legacy-aes.qcow"]:
    put("qcow2_header", f, head(vec("qemu", f), 4096).rstrip(b"\0"))

IHAVEOPT = 0x49484156454F5054


def opt(o, data=b""):
    return struct.pack(">QII", IHAVEOPT, o, len(data)) + data


def meta(export, *queries):
    b = struct.pack(">I", len(export)) + export + struct.pack(">I", len(queries))
    for q in queries:
        b += struct.pack(">I", len(q)) + q
    return b


go = struct.pack(">I", 0) + struct.pack(">H", 1) + struct.pack(">H", 3)
put("nbd_handshake", "go-structured", b"\0" + struct.pack(">I", 3) + opt(8) + opt(10, meta(b"", b"base:allocation")) + opt(7, go))
put("nbd_handshake", "list-info-abort", b"\0" + struct.pack(">I", 3) + opt(3) + opt(9, meta(b"ro", b"base:")) + opt(6, struct.pack(">I", 2) + b"ro" + struct.pack(">H", 0)) + opt(2))
put("nbd_handshake", "export-name-oldstyle", b"\0" + struct.pack(">I", 2) + opt(1, b"ro"))
put("nbd_handshake", "tls-required", b"\1" + struct.pack(">I", 1) + opt(3) + opt(5) + opt(7, go))
put("nbd_handshake", "oversized", b"\0" + struct.pack(">I", 1) + struct.pack(">QII", IHAVEOPT, 7, 1 << 20) + opt(11))


def req(kind, off, length, flags=0, cookie=1, payload=b""):
    return struct.pack(">IHHQQI", 0x25609513, flags, kind, cookie, off, length) + payload


size = struct.pack(">Q", 1 << 20)
put("nbd_transmission", "all-commands", size + b"\x06" + req(0, 0, 4096) + req(1, 512, 16, 1, 2, b"x" * 16) + req(3, 0, 0) + req(4, 0, 4096) + req(5, 0, 4096) + req(6, 4096, 4096, 0x12) + req(7, 0, 65536, 8) + req(2, 0, 0))
put("nbd_transmission", "read-only-rejects", size + b"\x01" + req(1, 0, 8, 0, 3, b"12345678") + req(0, (1 << 20) - 4, 8) + req(0, 0, 1 << 26) + req(9, 0, 0) + req(6, 0, 1, 0x10))

for i, s in enumerate([
    "driver=qcow2,file.driver=file,file.filename=disk,,1.qcow2,encrypt.key-secret=sec0",
    "driver=luks,key-secret=s0,file.driver=file,file.filename=/tmp/a.luks,file.locking=off",
    "secret,id=s0,file=/tmp/pass,format=raw",
    "driver=raw,size=1G,offset=512,file.driver=file,file.filename=x,read-only=on",
    'json:{"driver":"qcow2","file":{"driver":"file","filename":"a.qcow2"},"backing.driver":"raw","encrypt.format":"luks"}',
    'json:{"file.filename":"b","file":{"driver":"file"},"cache":{"direct":true}}',
]):
    put("image_opts", f"seed{i}", s.encode())
