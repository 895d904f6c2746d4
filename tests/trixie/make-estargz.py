#!/usr/bin/env python3
"""make-estargz.py SRC_LAYOUT:TAG DST_LAYOUT:TAG - rewrites every layer of an OCI image as eStargz.

The trixie tools cannot write eStargz, and with a tar-split embedded in every zstd:chunked blob
c/storage 1.57 always records a layer's DiffID. A partial pull of an eStargz layer, though, has
no tar-split: with `insecure_allow_unpredictable_image_contents` c/storage stores it known only
by its table of contents (no diff-digest; c/image records flags["expected-layer-diffid"]).
That is the "TOC-only" layer kind the tests need, so this writes such blobs by hand.

eStargz (containerd/stargz-snapshotter's format), as written here:
  * a gzip stream made of many gzip members; decompressed, it is one tar;
  * each regular file's content is a gzip member of its own; tar headers and padding are in
    the members around them;
  * before the tar's end-of-archive blocks, an entry `stargz.index.json` holds the TOC
    (JSON: version 1, entries with name, type, size, modtime, mode, uid, gid, linkName,
    digest, offset = compressed offset of the content's member, chunkSize, chunkDigest);
    it and the end-of-archive blocks are one gzip member;
  * a 51-byte footer: an empty gzip member whose extra field "SG" holds "%016xSTARGZ" with
    the TOC member's offset.
The manifest annotates each layer with containerd.io/snapshot/stargz/toc.digest (sha256 of
the TOC JSON); the config's DiffIDs are the sha256 of the decompressed streams.
Output is deterministic (gzip mtime 0).
"""
import base64
import gzip
import hashlib
import io
import json
import os
import struct
import sys
import tarfile
import time

TOC_NAME = "stargz.index.json"


def member(data):
    """One gzip member, deterministic."""
    return gzip.compress(data, compresslevel=6, mtime=0)


def footer(toc_offset):
    sub = b"%016xSTARGZ" % toc_offset
    extra = b"SG" + struct.pack("<H", len(sub)) + sub
    hdr = b"\x1f\x8b\x08\x04" + b"\x00\x00\x00\x00" + b"\x00\xff" + struct.pack("<H", len(extra)) + extra
    body = b"\x01\x00\x00\xff\xff"  # final stored block, empty
    f = hdr + body + struct.pack("<II", 0, 0)
    assert len(f) == 51, len(f)
    return f


def rfc3339(t):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def toc_type(m):
    if m.isdir():
        return "dir"
    if m.issym():
        return "symlink"
    if m.islnk():
        return "hardlink"
    if m.ischr():
        return "char"
    if m.isblk():
        return "block"
    if m.isfifo():
        return "fifo"
    return "reg"


def convert(tar_bytes):
    """Returns (estargz blob, toc digest, diff id)."""
    tf = tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:")
    members = tf.getmembers()
    out = bytearray()
    entries = []
    pos = 0  # position in tar_bytes already written
    for m in members:
        e = {
            "name": m.name + ("/" if m.isdir() and not m.name.endswith("/") else ""),
            "type": toc_type(m),
            "modtime": rfc3339(m.mtime),
            "mode": m.mode,
            "uid": m.uid,
            "gid": m.gid,
        }
        if m.uname:
            e["userName"] = m.uname
        if m.gname:
            e["groupName"] = m.gname
        if m.issym() or m.islnk():
            e["linkName"] = m.linkname
        if m.ischr() or m.isblk():
            e["devMajor"] = m.devmajor
            e["devMinor"] = m.devminor
        xattrs = {k[len("SCHILY.xattr."):]: base64.b64encode(v.encode("utf-8", "surrogateescape")).decode()
                  for k, v in m.pax_headers.items() if k.startswith("SCHILY.xattr.")}
        if xattrs:
            e["xattrs"] = xattrs
        if m.isreg() and m.size > 0:
            # headers (and the previous padding) up to the content
            out += member(tar_bytes[pos:m.offset_data])
            data = tar_bytes[m.offset_data:m.offset_data + m.size]
            start = len(out)
            out += member(data)
            d = "sha256:" + hashlib.sha256(data).hexdigest()
            e.update({"size": m.size, "digest": d, "offset": start, "endOffset": len(out),
                      "chunkSize": m.size, "chunkDigest": d})
            pos = m.offset_data + m.size
        elif m.isreg():
            e["size"] = 0
        entries.append(e)
    # the end of the last member's data, padded: where the end-of-archive blocks start
    end = tf.offset
    if pos < end:
        out += member(tar_bytes[pos:end])
    toc = json.dumps({"version": 1, "entries": entries}, separators=(",", ":")).encode()
    ti = tarfile.TarInfo(TOC_NAME)
    ti.size = len(toc)
    ti.mode = 0o644
    ti.mtime = 0
    ti.type = tarfile.REGTYPE
    toc_tar = ti.tobuf(format=tarfile.USTAR_FORMAT) + toc + b"\0" * ((512 - len(toc) % 512) % 512) + b"\0" * 1024
    toc_off = len(out)
    out += member(toc_tar)
    out += footer(toc_off)
    uncompressed = tar_bytes[:end] + toc_tar
    # the blob must decompress to exactly that tar
    assert gzip.decompress(bytes(out)) == uncompressed
    return bytes(out), "sha256:" + hashlib.sha256(toc).hexdigest(), "sha256:" + hashlib.sha256(uncompressed).hexdigest()


def blob(layout, digest):
    return open(os.path.join(layout, "blobs", digest.replace(":", "/")), "rb").read()


def put(layout, data):
    d = "sha256:" + hashlib.sha256(data).hexdigest()
    p = os.path.join(layout, "blobs", "sha256", d[7:])
    with open(p, "wb") as f:
        f.write(data)
    return d, len(data)


def main():
    src, src_tag = sys.argv[1].rsplit(":", 1)
    dst, dst_tag = sys.argv[2].rsplit(":", 1)
    idx = json.load(open(os.path.join(src, "index.json")))
    desc = next(m for m in idx["manifests"] if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == src_tag)
    man = json.loads(blob(src, desc["digest"]))
    cfg = json.loads(blob(src, man["config"]["digest"]))
    os.makedirs(os.path.join(dst, "blobs", "sha256"), exist_ok=True)
    with open(os.path.join(dst, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')
    layers, diff_ids, tocs = [], [], []
    for l in man["layers"]:
        raw = blob(src, l["digest"])
        if l["mediaType"].endswith("+gzip"):
            raw = gzip.decompress(raw)
        esgz, toc_digest, diff_id = convert(raw)
        d, n = put(dst, esgz)
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": n,
                       "annotations": {"containerd.io/snapshot/stargz/toc.digest": toc_digest,
                                       "io.containers.estargz.uncompressed-size": str(len(gzip.decompress(esgz)))}})
        diff_ids.append(diff_id)
        tocs.append(toc_digest)
    cfg["rootfs"]["diff_ids"] = diff_ids
    cd, cn = put(dst, json.dumps(cfg, separators=(",", ":")).encode())
    man2 = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cn},
            "layers": layers}
    md, mn = put(dst, json.dumps(man2, separators=(",", ":")).encode())
    with open(os.path.join(dst, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                   "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": mn,
                                  "annotations": {"org.opencontainers.image.ref.name": dst_tag}}]}, f)
    print(json.dumps({"config": cd, "manifest": md, "diff_ids": diff_ids, "toc_digests": tocs}, indent=1))


if __name__ == "__main__":
    main()
