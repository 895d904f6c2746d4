#!/usr/bin/env python3
"""Adds an image to an OCI image layout (creating the layout if needed).

    mkoci.py LAYOUT TAG [--arch ARCH] [--label K=V]... [--plain] DIR [DIR...]

Each DIR becomes one layer, tarred by GNU tar (sorted names, fixed mtime) and gzip-compressed
unless --plain. Used by the demo and the benchmarks to make real images without a registry;
the store itself is then written by skopeo.
"""
import argparse, gzip, hashlib, json, os, platform, subprocess, sys


def put(layout, data):
    h = hashlib.sha256(data).hexdigest()
    path = os.path.join(layout, "blobs", "sha256", h)
    if not os.path.exists(path):
        with open(path, "wb") as f:
            f.write(data)
    return "sha256:" + h


def main():
    p = argparse.ArgumentParser()
    p.add_argument("layout")
    p.add_argument("tag")
    p.add_argument("dirs", nargs="+")
    p.add_argument("--arch", default={"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine()))
    p.add_argument("--label", action="append", default=[])
    p.add_argument("--plain", action="store_true")
    a = p.parse_args()
    os.makedirs(os.path.join(a.layout, "blobs", "sha256"), exist_ok=True)
    with open(os.path.join(a.layout, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')
    index_path = os.path.join(a.layout, "index.json")
    index = {"schemaVersion": 2, "manifests": []}
    if os.path.exists(index_path):
        index = json.load(open(index_path))
    layers, diff_ids = [], []
    for d in a.dirs:
        tar = subprocess.run(["tar", "-C", d, "--sort=name", "--mtime=@1700000000", "--format=posix",
                              "--numeric-owner", "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime",
                              "-cf", "-", "."], check=True, stdout=subprocess.PIPE).stdout
        diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
        if a.plain:
            blob, mt = tar, "application/vnd.oci.image.layer.v1.tar"
        else:
            blob, mt = gzip.compress(tar, compresslevel=1, mtime=0), "application/vnd.oci.image.layer.v1.tar+gzip"
        layers.append({"mediaType": mt, "digest": put(a.layout, blob), "size": len(blob)})
    labels = dict(kv.split("=", 1) for kv in a.label)
    config = {"created": "2024-01-02T03:04:05Z", "architecture": a.arch, "os": "linux",
              "config": {"Env": ["PATH=/usr/local/bin:/usr/bin:/bin"], "Labels": labels},
              "rootfs": {"type": "layers", "diff_ids": diff_ids},
              "history": [{"created": "2024-01-02T03:04:05Z", "created_by": "mkoci.py " + d} for d in a.dirs]}
    cb = json.dumps(config).encode()
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": put(a.layout, cb), "size": len(cb)},
                "layers": layers}
    mb = json.dumps(manifest).encode()
    md = put(a.layout, mb)
    index["manifests"] = [m for m in index["manifests"]
                          if m.get("annotations", {}).get("org.opencontainers.image.ref.name") != a.tag]
    index["manifests"].append({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": len(mb),
                               "annotations": {"org.opencontainers.image.ref.name": a.tag}})
    with open(index_path + ".tmp", "w") as f:
        json.dump(index, f)
    os.rename(index_path + ".tmp", index_path)
    print(md)


if __name__ == "__main__":
    sys.exit(main())
