#!/usr/bin/python3
"""librbd itself, for the interop tests (python3-rbd): format and load librbd's image
encryption, read and write through it. Passphrases are read from files (exact bytes).

  librbd.py create NAME SIZE
  librbd.py format NAME luks1|luks2 PASSFILE      (rbd_encryption_format, real KDF)
  librbd.py write  NAME FMT PASSFILE OFFSET DATAFILE
  librbd.py read   NAME FMT PASSFILE OFFSET LEN    (to stdout; LEN -1: to the end)
  librbd.py load   NAME FMT PASSFILE               (prints "loaded" or "refused")
  librbd.py hold-lock NAME COOKIE                 (takes vmcrypt's header lock, prints
                                                  "locked", releases it at EOF on stdin)
  librbd.py hold-writer NAME                      (writes raw bytes at the image's end,
                                                  so librbd takes its exclusive lock; prints
                                                  "wrote"; at EOF on stdin writes again and
                                                  prints "wrote again" or the error)
  FMT none: no encryption loaded.
"""
import os
import sys

import rados
import rbd

FORMATS = {"luks1": rbd.RBD_ENCRYPTION_FORMAT_LUKS1, "luks2": rbd.RBD_ENCRYPTION_FORMAT_LUKS2}


def image(io, name, fmt, passfile):
    im = rbd.Image(io, name)
    if fmt != "none":
        with open(passfile, "rb") as f:
            im.encryption_load(FORMATS[fmt], f.read())
    return im


def main(a):
    cluster = rados.Rados(conffile=os.environ["CEPH_CONF"])
    cluster.connect()
    io = cluster.open_ioctx("rbd")
    try:
        cmd = a[0]
        if cmd == "create":
            rbd.RBD().create(io, a[1], int(a[2]))
        elif cmd == "format":
            with rbd.Image(io, a[1]) as im, open(a[3], "rb") as f:
                im.encryption_format(FORMATS[a[2]], f.read())
        elif cmd == "write":
            with image(io, a[1], a[2], a[3]) as im, open(a[5], "rb") as f:
                data = f.read()
                assert im.write(data, int(a[4])) == len(data)
                im.flush()
        elif cmd == "load":
            # The image must be closed after a refused load, or shutdown hangs.
            with rbd.Image(io, a[1]) as im, open(a[3], "rb") as f:
                try:
                    im.encryption_load(FORMATS[a[2]], f.read())
                    print("loaded")
                except rbd.PermissionError:
                    print("refused")
        elif cmd == "read":
            with image(io, a[1], a[2], a[3]) as im:
                off, n = int(a[4]), int(a[5])
                if n < 0:
                    n = im.size() - off
                out = bytearray()
                while n > 0:
                    chunk = im.read(off, min(n, 8 << 20))
                    out += chunk
                    off += len(chunk)
                    n -= len(chunk)
                sys.stdout.buffer.write(out)
        elif cmd == "hold-lock":
            with rbd.Image(io, a[1]) as im:
                oid = "rbd_header." + im.id()
            io.lock_exclusive(oid, "vmcrypt_luks", a[2], desc=a[2])
            print("locked", flush=True)
            sys.stdin.read()
            io.unlock(oid, "vmcrypt_luks", a[2])
        elif cmd == "hold-writer":
            with rbd.Image(io, a[1]) as im:
                at = im.size() - 4096
                im.write(b"w" * 4096, at)
                print("wrote", flush=True)
                sys.stdin.read()
                try:
                    im.write(b"v" * 4096, at)
                    im.flush()
                    print("wrote again", flush=True)
                except rbd.Error as e:
                    print("second write failed: %r" % e, flush=True)
        else:
            sys.exit("unknown command " + cmd)
    finally:
        io.close()
        cluster.shutdown()


main(sys.argv[1:])
