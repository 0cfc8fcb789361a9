"""Checks of deploy/ that no off-the-shelf tool makes (run by scripts/check-deploy.sh).

    check_deploy.py compose    deploy/compose.yaml      every image pinned; TRUSTED_PROXIES is nginx's address
    check_deploy.py grafana    deploy                   provisioning files parse and match the compose mounts
    check_deploy.py dockerfile deploy/Dockerfile        pinned bases, non-root USER, HEALTHCHECK, locked build
    check_deploy.py limits     deploy/nginx/coinpay.conf  client_max_body_size == coinpay's body caps
    check_deploy.py nginx-run  DIR                      the site (prepared in DIR) served by nginx on loopback

Each prints one "ok: ..." line, or the problems and exits 1. Needs PyYAML.
"""

import ipaddress
import json
import os
import re
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fail(problems):
    for p in problems:
        print(f"FAIL: {p}", file=sys.stderr)
    sys.exit(1)


def pinned(image):
    """name:TAG where TAG names a release (has a digit), not latest/stable/a bare major."""
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag:
        return False
    if tag in ("latest", "stable", "mainline", "edge", "lts"):
        return False
    # At least major.minor: "7" or "11" moves with every release.
    return re.match(r"^v?\d+\.\d+", tag) is not None


def compose(path):
    doc = yaml.safe_load(open(path, encoding="utf-8"))
    problems = []
    services = doc.get("services") or {}
    if not services:
        problems.append("no services")
    for name, svc in services.items():
        image = svc.get("image")
        if not image:
            problems.append(f"service {name}: no image (a built service needs a pinned image tag too)")
        elif not pinned(image):
            problems.append(f"service {name}: image {image!r} is not pinned to a release")
    need = {"mariadb", "redis", "coinpay-a", "coinpay-b", "nginx", "prometheus", "grafana"}
    missing = need - set(services)
    if missing:
        problems.append(f"missing services: {sorted(missing)}")
    envs = {n: services[n].get("environment") or {} for n in ("coinpay-a", "coinpay-b") if n in services}
    secrets = {n: e.get("JWT_SECRET") for n, e in envs.items()}
    if len(set(secrets.values())) != 1 or None in secrets.values():
        problems.append(f"the coinpay instances must share one JWT_SECRET: {secrets}")
    nginx_ips = []
    for net in ((services.get("nginx") or {}).get("networks") or {}).values():
        if isinstance(net, dict) and net.get("ipv4_address"):
            nginx_ips.append(ipaddress.ip_address(net["ipv4_address"]))
    if not nginx_ips:
        problems.append("nginx has no fixed address: TRUSTED_PROXIES cannot name it")
    for n, e in envs.items():
        if not e.get("METRICS_BIND_ADDR"):
            problems.append(f"{n}: METRICS_BIND_ADDR not set (/metrics would be on the public listener)")
        trusted = [ipaddress.ip_network(c.strip()) for c in str(e.get("TRUSTED_PROXIES", "")).split(",") if c.strip()]
        if not trusted:
            problems.append(f"{n}: TRUSTED_PROXIES not set")
        for net in trusted:
            if not any(ip in net for ip in nginx_ips):
                problems.append(f"{n}: TRUSTED_PROXIES {net} does not contain nginx's address {nginx_ips}")
            if net.num_addresses > 1:
                problems.append(f"{n}: TRUSTED_PROXIES {net} trusts more than nginx's one address")
        for port in services[n].get("ports") or []:
            problems.append(f"{n}: publishes {port}: only nginx should be reachable from outside")
    prom = services.get("prometheus") or {}
    for p in prom.get("ports") or []:
        if not str(p).startswith("127.0.0.1:"):
            problems.append(f"prometheus publishes {p} beyond loopback")
    if problems:
        fail(problems)
    print(f"ok: {path}: {len(services)} services, every image pinned, "
          f"TRUSTED_PROXIES = nginx's {nginx_ips[0]}, one JWT_SECRET, METRICS_BIND_ADDR set")


def grafana(deploy):
    problems = []
    comp = yaml.safe_load(open(os.path.join(deploy, "compose.yaml"), encoding="utf-8"))
    mounts = (comp["services"]["grafana"].get("volumes") or [])
    ds = yaml.safe_load(open(os.path.join(deploy, "grafana/provisioning/datasources/prometheus.yml"), encoding="utf-8"))
    prov = yaml.safe_load(open(os.path.join(deploy, "grafana/provisioning/dashboards/coinpay.yml"), encoding="utf-8"))
    dash = json.load(open(os.path.join(deploy, "grafana/coinpay-dashboard.json"), encoding="utf-8"))
    for name, doc in (("datasources", ds), ("dashboards", prov)):
        if doc.get("apiVersion") != 1:
            problems.append(f"{name} provisioning: apiVersion must be 1")
    sources = ds.get("datasources") or []
    if not any(s.get("type") == "prometheus" and s.get("url") == "http://prometheus:9090" for s in sources):
        problems.append("no Prometheus data source at http://prometheus:9090")
    paths = [p.get("options", {}).get("path") for p in prov.get("providers") or []]
    mounted = [m.split(":")[1] for m in mounts if m.split(":")[0].endswith("coinpay-dashboard.json")]
    if not paths or not any(m.startswith(p.rstrip("/") + "/") for p in paths for m in mounted):
        problems.append(f"the dashboard is mounted at {mounted}, the provider reads {paths}")
    if not any(m.split(":")[1] == "/etc/grafana/provisioning" for m in mounts):
        problems.append("the provisioning directory is not mounted at /etc/grafana/provisioning")
    # A provisioned dashboard gets no import prompt: ${DS_PROMETHEUS} must be a variable.
    names = [v.get("name") for v in dash.get("templating", {}).get("list", [])]
    if "DS_PROMETHEUS" not in names:
        problems.append("the dashboard has no DS_PROMETHEUS data source variable")
    if problems:
        fail(problems)
    print(f"ok: Grafana provisioning: {len(sources)} data source(s), dashboard {dash.get('uid')!r} from {paths[0]}")


def dockerfile(path):
    lines = []
    for raw in open(path, encoding="utf-8").read().replace("\\\n", " ").splitlines():
        s = raw.strip()
        if s and not s.startswith("#"):
            lines.append(s)
    problems = []
    froms = [l.split()[1] for l in lines if l.upper().startswith("FROM ")]
    if len(froms) < 2:
        problems.append("not a multi-stage build")
    for image in froms:
        if not pinned(image):
            problems.append(f"FROM {image}: not pinned to a release")
    final = [l for l in lines[max(i for i, l in enumerate(lines) if l.upper().startswith("FROM ")):]]
    users = [l.split()[1] for l in final if l.upper().startswith("USER ")]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problems.append("the final stage does not switch to a non-root USER")
    if not any(l.upper().startswith("HEALTHCHECK ") and "healthcheck" in l for l in final):
        problems.append("no HEALTHCHECK running `coinpay healthcheck` in the final stage")
    if not any("cargo build" in l and "--locked" in l and "--release" in l for l in lines):
        problems.append("no `cargo build --locked --release`")
    if any(re.search(r"\b(apt-get|apk|curl|wget)\b", l) for l in final):
        problems.append("the runtime stage installs or downloads something")
    if problems:
        fail(problems)
    print(f"ok: {path}: multi-stage {froms}, USER {users[-1]}, HEALTHCHECK, locked release build")


def limits(path):
    conf = open(path, encoding="utf-8").read()
    m = re.search(r"^\s*client_max_body_size\s+(\d+)([kKmM]?);", conf, re.M)
    if not m:
        fail([f"{path}: no client_max_body_size"])
    nginx = int(m.group(1)) * {"": 1, "k": 1024, "m": 1024 * 1024}[m.group(2).lower()]

    def cap(rel, pattern):
        src = open(os.path.join(ROOT, rel), encoding="utf-8").read()
        found = re.search(pattern, src)
        if not found:
            fail([f"{rel}: the body cap ({pattern}) is not where this check looks"])
        product = 1
        for factor in found.group(1).split("*"):  # "64 * 1024"
            product *= int(factor)
        return product

    json_cap = cap("src/http/mod.rs", r"JsonConfig::default\(\)\s*\.limit\(([\d\s*]+)\)")
    xml_cap = cap("src/wechat/xml.rs", r"pub const MAX_BODY: usize = ([\d\s*]+);")
    if nginx != max(json_cap, xml_cap):
        fail([f"nginx client_max_body_size is {nginx} bytes, coinpay's caps are JSON {json_cap} and notification XML {xml_cap}"])
    print(f"ok: nginx client_max_body_size {nginx} = coinpay's caps (JSON {json_cap}, XML {xml_cap})")


def nginx_run(workdir):
    """Runs nginx on the site (prepared by check-deploy.sh in WORKDIR: nginx.conf, coinpay.conf
    with the upstream on UPSTREAM_PORT) on loopback ports, with an echo server as coinpay, and
    checks what the site does: redirect, body limit, hidden paths, X-Forwarded-For."""
    import http.client
    import http.server
    import socket
    import ssl
    import subprocess
    import threading
    import time

    def free_port():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    class Echo(http.server.BaseHTTPRequestHandler):
        def reply(self):
            n = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(n)
            body = json.dumps({"path": self.path, "xff": self.headers.get("X-Forwarded-For"),
                               "proto": self.headers.get("X-Forwarded-Proto"), "len": n}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        do_GET = do_POST = reply

        def log_message(self, *args):
            pass

    echo = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=echo.serve_forever, daemon=True).start()
    http_port, https_port = free_port(), free_port()
    site = open(os.path.join(workdir, "coinpay.conf"), encoding="utf-8").read()
    site = re.sub(r"server 127\.0\.0\.1:800[01]", f"server 127.0.0.1:{echo.server_port}", site)
    site = re.sub(r"^\s*listen \[::\]:\d+( ssl)?;\n", "", site, flags=re.M)
    site = site.replace("listen 80;", f"listen 127.0.0.1:{http_port};")
    site = site.replace("listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;")
    open(os.path.join(workdir, "coinpay.conf"), "w", encoding="utf-8").write(site)
    conf = os.path.join(workdir, "nginx.conf")
    nginx = subprocess.Popen(["nginx", "-e", "stderr", "-p", workdir, "-c", conf, "-g", "daemon off;"],
                             stderr=subprocess.PIPE)
    problems = []
    try:
        deadline = time.time() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", https_port), timeout=1).close()
                break
            except OSError:
                if nginx.poll() is not None or time.time() > deadline:
                    fail([f"nginx did not start: {nginx.stderr.read().decode(errors='replace')}"])
                time.sleep(0.05)
        tls = ssl.create_default_context()
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE

        def request(method, path, body=None, headers=None, plain=False):
            c = (http.client.HTTPConnection("127.0.0.1", http_port, timeout=10) if plain else
                 http.client.HTTPSConnection("127.0.0.1", https_port, timeout=10, context=tls))
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            data = r.read()
            c.close()
            return r.status, r.getheader("Location"), data

        def expect(what, got, want):
            if got != want:
                problems.append(f"{what}: got {got!r}, want {want!r}")

        cb = "/api/v1/client/coin/recharge/callback"
        status, location, _ = request("GET", "/api/v1/client/coin/packages", plain=True)
        expect("http:// redirects", (status, (location or "").startswith("https://")), (301, True))
        status, _, data = request("POST", cb, b"x" * 65536, {"X-Forwarded-For": "101.226.103.9"})
        expect("a 64 KiB notification reaches coinpay", status, 200)
        if status == 200:
            seen = json.loads(data)
            expect("X-Forwarded-For is the client's address, not what it claims", seen["xff"], "127.0.0.1")
            expect("X-Forwarded-Proto", seen["proto"], "https")
        status, _, _ = request("POST", cb, b"x" * 65537)
        expect("a body over coinpay's 64 KiB cap", status, 413)
        for path in ("/metrics", "/admin/", "/api/v1/admin/orders", "/api/v1/internal/coin/consume", "/sandbox/x", "/readyz"):
            status, _, _ = request("GET", path)
            expect(f"{path} from the internet", status in (403, 404), True)
        status, _, _ = request("GET", "/healthz")
        expect("/healthz", status, 200)
    finally:
        nginx.terminate()
        try:
            nginx.wait(timeout=10)
        except subprocess.TimeoutExpired:
            nginx.kill()
            nginx.wait()
        echo.shutdown()
    if problems:
        fail(problems)
    print("ok: nginx serving the site: HTTP -> HTTPS, 64 KiB passes and 64 KiB + 1 gets 413, "
          "X-Forwarded-For replaced by the client address, /metrics /admin/ /api/v1/admin/ /api/v1/internal/ /readyz not public")


if __name__ == "__main__":
    cmds = {"compose": compose, "grafana": grafana, "dockerfile": dockerfile, "limits": limits,
            "nginx-run": nginx_run}
    if len(sys.argv) != 3 or sys.argv[1] not in cmds:
        sys.exit(__doc__)
    cmds[sys.argv[1]](sys.argv[2])
