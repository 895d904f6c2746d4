#!/usr/bin/env python3
"""Build a small 3-layer OCI image layout by hand (no tools needed).

usage: make-oci-layout.py OUTDIR [BUSYBOX]

Layers (gzip-compressed, deterministic: mtime fixed, gzip mtime 0):
  1 base : bin/busybox (+ sh/touch/echo/ls/cat/mkdir/rm symlinks, if BUSYBOX
           given: needed for `podman build` RUN steps), etc/hello, etc/empty,
           etc/hello-hardlink (hard link), etc/passwd, tmp/ (1777),
           var/old/gone.txt, var/old/keep.txt, opq/a, opq/b
  2 mod  : etc/hello changed, var/old/.wh.gone.txt (whiteout),
           opq/ opaque (opq/.wh..wh..opq) + opq/new, home/user/secret
           (uid/gid 1000, mode 0600), a file with a PAX xattr (user.test)
  3 top  : usr/share/doc/readme.txt, usr/share/doc/link -> readme.txt,
           a long path name (> 100 chars), an executable script
Image ref name in index.json: "v1" (use oci:OUTDIR:v1).
"""
import gzip, hashlib, io, json, os, sys, tarfile

MTIME = 1700000000


def ti(name, typ=tarfile.REGTYPE, mode=0o644, uid=0, gid=0, size=0, **kw):
    t = tarfile.TarInfo(name)
    t.type = typ
    t.mode = mode
    t.uid, t.gid = uid, gid
    t.uname = t.gname = ""
    t.mtime = MTIME
    t.size = size
    for k, v in kw.items():
        setattr(t, k, v)
    return t


def add_dir(tf, name, mode=0o755):
    tf.addfile(ti(name, tarfile.DIRTYPE, mode))


def add_file(tf, name, data, mode=0o644, uid=0, gid=0, pax=None):
    if isinstance(data, str):
        data = data.encode()
    t = ti(name, mode=mode, uid=uid, gid=gid, size=len(data))
    if pax:
        t.pax_headers = pax
    tf.addfile(t, io.BytesIO(data))


def add_symlink(tf, name, target):
    tf.addfile(ti(name, tarfile.SYMTYPE, 0o777, linkname=target))


def add_hardlink(tf, name, target):
    tf.addfile(ti(name, tarfile.LNKTYPE, 0o644, linkname=target))


def layer(build):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        build(tf)
    tar = raw.getvalue()
    gz = io.BytesIO()
    with gzip.GzipFile(fileobj=gz, mode="wb", mtime=0, compresslevel=6) as g:
        g.write(tar)
    return tar, gz.getvalue()


def main():
    out = sys.argv[1]
    busybox = sys.argv[2] if len(sys.argv) > 2 else None

    def l1(tf):
        add_dir(tf, "bin")
        if busybox:
            with open(busybox, "rb") as f:
                add_file(tf, "bin/busybox", f.read(), mode=0o755)
            for app in ["sh", "touch", "echo", "ls", "cat", "mkdir", "rm", "true"]:
                add_symlink(tf, "bin/" + app, "busybox")
        add_dir(tf, "etc")
        add_file(tf, "etc/hello", "hello\n")
        add_file(tf, "etc/empty", b"")
        add_hardlink(tf, "etc/hello-hardlink", "etc/hello")
        add_file(tf, "etc/passwd", "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n")
        add_file(tf, "etc/group", "root:x:0:\nuser:x:1000:\n")
        add_dir(tf, "tmp", 0o1777)
        add_dir(tf, "root", 0o700)
        add_dir(tf, "var")
        add_dir(tf, "var/old")
        add_file(tf, "var/old/gone.txt", "to be deleted\n")
        add_file(tf, "var/old/keep.txt", "kept\n")
        add_dir(tf, "opq")
        add_file(tf, "opq/a", "a\n")
        add_file(tf, "opq/b", "b\n")

    def l2(tf):
        add_dir(tf, "etc")
        add_file(tf, "etc/hello", "hello, layer 2\n")
        add_dir(tf, "var/old")
        add_file(tf, "var/old/.wh.gone.txt", b"", mode=0)
        add_dir(tf, "opq")
        add_file(tf, "opq/.wh..wh..opq", b"", mode=0)
        add_file(tf, "opq/new", "new in opaque dir\n")
        add_dir(tf, "home")
        add_dir(tf, "home/user", 0o750)
        tf.members  # noqa
        t = ti("home/user/secret", mode=0o600, uid=1000, gid=1000, size=7)
        tf.addfile(t, io.BytesIO(b"secret\n"))
        add_file(tf, "etc/xattr-file", "has a user xattr\n",
                 pax={"SCHILY.xattr.user.test": "value"})

    def l3(tf):
        add_dir(tf, "usr")
        add_dir(tf, "usr/share")
        add_dir(tf, "usr/share/doc")
        add_file(tf, "usr/share/doc/readme.txt", "readme " * 200 + "\n")
        add_symlink(tf, "usr/share/doc/link", "readme.txt")
        longdir = "usr/share/" + "d" * 60 + "/" + "e" * 60
        add_dir(tf, "usr/share/" + "d" * 60)
        add_dir(tf, longdir)
        add_file(tf, longdir + "/long-name-file.txt", "long path\n")
        add_file(tf, "usr/share/doc/run.sh", "#!/bin/sh\necho hi\n", mode=0o755)

    os.makedirs(os.path.join(out, "blobs", "sha256"), exist_ok=True)

    def put(data):
        d = hashlib.sha256(data).hexdigest()
        with open(os.path.join(out, "blobs", "sha256", d), "wb") as f:
            f.write(data)
        return "sha256:" + d

    layers, diff_ids, history = [], [], []
    for i, b in enumerate([l1, l2, l3], 1):
        tar, gz = layer(b)
        diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                       "digest": put(gz), "size": len(gz)})
        history.append({"created": "2023-11-14T22:13:20Z", "created_by": f"make-oci-layout layer {i}"})
    config = {
        "created": "2023-11-14T22:13:20Z",
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                   "Cmd": ["/bin/sh"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    }
    cfg = json.dumps(config, separators=(",", ":")).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": put(cfg), "size": len(cfg)},
        "layers": layers,
    }
    man = json.dumps(manifest, separators=(",", ":")).encode()
    mdig = put(man)
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                            "digest": mdig, "size": len(man),
                            "annotations": {"org.opencontainers.image.ref.name": "v1"}}]}
    with open(os.path.join(out, "index.json"), "w") as f:
        json.dump(index, f)
    with open(os.path.join(out, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    print(json.dumps({"manifest": mdig, "config": manifest["config"]["digest"],
                      "layers": [l["digest"] for l in layers], "diff_ids": diff_ids}, indent=1))


if __name__ == "__main__":
    main()
