#!/usr/bin/env python3
"""A stand-in Kubernetes API server for the kubectl plugin tests: just enough discovery for kubectl
to map Pods, Nodes and DaemonSets, one Node, and every object POSTed recorded as a file, so a test
reads what kubectl really sends. Usage: fake_kube_api.py PORT_FILE RECORD_DIR NODE"""
import json, os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port_file, record_dir, node_name = sys.argv[1], sys.argv[2], sys.argv[3]
resources_v1 = [
    {"name": "pods", "singularName": "pod", "namespaced": True, "kind": "Pod",
     "verbs": ["create", "delete", "get", "list", "watch"], "shortNames": ["po"]},
    {"name": "pods/attach", "singularName": "", "namespaced": True, "kind": "PodAttachOptions", "verbs": ["create", "get"]},
    {"name": "nodes", "singularName": "node", "namespaced": False, "kind": "Node",
     "verbs": ["get", "list"], "shortNames": ["no"]},
    {"name": "namespaces", "singularName": "namespace", "namespaced": False, "kind": "Namespace", "verbs": ["get", "list"]},
]
resources_apps = [
    {"name": "daemonsets", "singularName": "daemonset", "namespaced": True, "kind": "DaemonSet",
     "verbs": ["create", "delete", "get", "list"], "shortNames": ["ds"]},
]
count = [0]


def fields(b):
    """Top-level protobuf fields of one message: {number: [bytes or int]}."""
    out, i = {}, 0
    def varint():
        nonlocal i
        v, shift = 0, 0
        while True:
            c = b[i]; i += 1
            v |= (c & 0x7F) << shift
            if not c & 0x80:
                return v
            shift += 7
    while i < len(b):
        key = varint()
        num, wire = key >> 3, key & 7
        if wire == 0:
            out.setdefault(num, []).append(varint())
        elif wire == 2:
            n = varint(); out.setdefault(num, []).append(b[i:i + n]); i += n
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:
            return out
    return out


def pod_name_from_protobuf(body):
    try:
        raw = fields(body[4:])[2][0]          # Unknown.raw
        meta = fields(raw)[1][0]              # Pod.metadata
        return fields(meta)[1][0].decode()    # ObjectMeta.name
    except (KeyError, IndexError, UnicodeDecodeError):
        return None

class Api(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def reply(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def not_found(self):
        self.reply(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
                         "message": "the stand-in API server has no " + self.path})

    def do_GET(self):
        p = self.path.split("?")[0]
        if p == "/api":
            return self.reply(200, {"kind": "APIVersions", "versions": ["v1"],
                                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]})
        if p == "/apis":
            return self.reply(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": "apps", "versions": [{"groupVersion": "apps/v1", "version": "v1"}],
                 "preferredVersion": {"groupVersion": "apps/v1", "version": "v1"}}]})
        if p == "/api/v1":
            return self.reply(200, {"kind": "APIResourceList", "groupVersion": "v1", "resources": resources_v1})
        if p == "/apis/apps/v1":
            return self.reply(200, {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "apps/v1", "resources": resources_apps})
        if p == "/version":
            return self.reply(200, {"major": "1", "minor": "32", "gitVersion": "v1.32.0"})
        if p == "/api/v1/nodes/" + node_name:
            return self.reply(200, {"kind": "Node", "apiVersion": "v1", "metadata": {"name": node_name, "uid": "1"},
                                    "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
        return self.not_found()

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if "protobuf" in self.headers.get("Content-Type", ""):
            # kubectl's typed clients (debug) send protobuf: keep the raw bytes for the test.
            count[0] += 1
            with open(os.path.join(record_dir, "%02d-protobuf.bin" % count[0]), "wb") as f:
                f.write(body)
            # Answer in JSON (client-go decodes by the reply's Content-Type); the name is the
            # one kubectl asked for (metadata.name, field 1 of ObjectMeta, inside Pod field 1).
            name = pod_name_from_protobuf(body) or "unknown"
            return self.reply(201, {"kind": "Pod", "apiVersion": "v1",
                                    "metadata": {"name": name, "namespace": "default", "uid": "u%d" % count[0]},
                                    "spec": {"nodeName": node_name, "containers": [{"name": "debugger", "image": "x"}]},
                                    "status": {"phase": "Pending"}})
        obj = json.loads(body or b"{}")
        count[0] += 1
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + "abcde"
        kind = obj.get("kind", "Unknown")
        with open(os.path.join(record_dir, "%02d-%s-%s.json" % (count[0], kind, meta.get("name", "x"))), "w") as f:
            json.dump({"path": self.path.split("?")[0], "object": obj}, f)
        meta.setdefault("uid", "u%d" % count[0])
        if kind == "Pod":
            obj["status"] = {"phase": "Pending"}
        self.reply(201, obj)

    def do_DELETE(self):
        self.reply(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})

srv = ThreadingHTTPServer(("127.0.0.1", 0), Api)
with open(port_file + ".tmp", "w") as f:
    f.write(str(srv.server_address[1]))
os.rename(port_file + ".tmp", port_file)
srv.serve_forever()
