#!/usr/bin/env python3
"""Build the seed corpora of secrets_files and agent_files (fuzz/corpus/) from hand-
written files and contrib/agent.toml.example. The first byte of each input picks what
the rest is (see fuzz/src/secrets.rs and fuzz/src/agent.rs). Run from fuzz/."""
import os

C = "corpus"


def put(target, name, pick, data):
    os.makedirs(os.path.join(C, target), exist_ok=True)
    with open(os.path.join(C, target, name), "wb") as f:
        f.write(bytes([pick]) + data)


U = "9c5f4ab4-4d5b-4d8e-9a4e-0a8f1c2b3d4e"
secrets = [
    f"<secret ephemeral='no' private='no'>\n  <uuid>{U}</uuid>\n  <usage type='volume'>\n    <volume>/vms/a.img</volume>\n  </usage>\n</secret>\n",
    f"<secret ephemeral='no' private='yes'><uuid>{U}</uuid><description>a &amp; b</description><usage type='ceph'><name>client.admin</name></usage></secret>",
    "<secret><usage type='iscsi'><target>libvirtiscsi</target></usage></secret>",
    "<secret ephemeral='yes'><usage type='tls'><name>t</name></usage></secret>",
    f"<?xml version='1.0'?>\n<!-- c --><secret><uuid>{U.upper()}</uuid><usage type='vtpm'><name>v</name></usage></secret>",
]
for i, s in enumerate(secrets):
    put("secrets_files", f"xml{i}", 0, s.encode())
    put("secrets_files", f"store-xml{i}", 1, s.encode())
put("secrets_files", "value-magic", 2, b"VMCSEAL1" + bytes(24) + b"\x01" * 23)
put("secrets_files", "value-short", 2, b"VMCSEAL1" + bytes(10))
for i, t in enumerate(["volume:/vms/a.img", "ceph:client.admin", U, "aHVudGVyMg==\n", "x:"]):
    put("secrets_files", f"text{i}", 3, t.encode())

example = os.path.join("..", "contrib", "agent.toml.example")
put("agent_files", "config-example", 0, open(example, "rb").read())
put("agent_files", "config-small", 0, b'''[media]
watch = ["/run/media/root"]
[[vm]]
name = "web"
on_media_removed = "lock"
command = { start = ["true"], stop = ["true"] }
[[vm.disk]]
name = "root"
image = "/vms/web.luks"
keys = [{ file = "keys/web.key", label = "VMKEYS" }, { store_uuid = "9c5f4ab4-4d5b-4d8e-9a4e-0a8f1c2b3d4e" }, { ask = "web" }]
''')
put("agent_files", "mountinfo", 1, b"""22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
36 35 98:0 /mnt /mnt/key\\040s rw,noatime master:1 - vfat /dev/null rw,errors=continue
40 22 0:5 / /proc rw - proc proc rw
""")
for i, rel in enumerate(["web.key", "sub/inner.key", "in.key", "out.key", "rel-out.key",
                         "../outside/secret", "sub/../web.key", "/etc/passwd"]):
    put("agent_files", f"keyfile{i}", 2, rel.encode())
