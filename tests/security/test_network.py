"""Network reach from the sandbox: the host's loopback services (Jupyter, model servers),
the Docker socket, and the link-local metadata address. Traffic stays on this machine
(the metadata probe only needs to fail fast). The control is the same sandbox in the host's
network namespace (network_mode=host): there the host's loopback answers."""

from __future__ import annotations

import http.server
import threading

import pytest
from secharness import NETWORK, NO_SOCKET, assert_allowed, assert_stopped, says

from pimagic.relay import bridge_gateway

FETCH = """
import urllib.request
for url in {urls!r}:
    try:
        body = urllib.request.urlopen(url, timeout=3).read().decode()
        report(reached=True, body=body)
        break
    except Exception as e:
        report(reached=False, error=type(e).__name__ + ":" + str(e)[:80])
"""


def fetch(*urls: str) -> str:
    return FETCH.format(urls=list(urls))


def unreached(res) -> bool:
    """Every URL failed with a network error: refused or unreachable, nothing served."""
    return "reached=True" not in res.out and "jupyter-canary" not in res.out and "reached=False" in res.out


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"jupyter-canary")

    def log_message(self, *args):
        pass


@pytest.fixture
def host_server(request):
    server = http.server.ThreadingHTTPServer((request.param, 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def host_network(control):
    return control(NETWORK)


@pytest.mark.parametrize("host_server", ["127.0.0.1"], indirect=True)
def test_host_loopback_server_is_unreachable(box, host_network, host_server):
    """host-jupyter-loopback: a Jupyter-like server on the host's 127.0.0.1."""
    probe = fetch(f"http://host.docker.internal:{host_server}/", f"http://127.0.0.1:{host_server}/")
    assert_stopped(NETWORK, box.py(probe), unreached, control=host_network.py(probe), then=says("jupyter-canary"))


@pytest.mark.parametrize("host_server", ["0.0.0.0"], indirect=True)
def test_limit_host_server_on_all_interfaces_is_reachable(box, host_server):
    """host-all-interfaces (documented limit): a server bound to 0.0.0.0 listens on the bridge
    gateway too, so the sandbox reaches it. Bind notebook servers to 127.0.0.1."""
    res = box.py(fetch(f"http://host.docker.internal:{host_server}/"))
    assert res.values().get("reached") == "True", res


def test_docker_socket_is_absent(box):
    res = box.sh("ls -la /var/run/docker.sock /run/docker.sock /run/containerd 2>&1; ls /var/run/")
    assert_stopped(NO_SOCKET, res,
                   lambda r: r.out.count("No such file") == 3 and "docker" not in r.out.split("\n")[-2],
                   no_control="a control with the engine's socket mounted would hand the host to the test's agent")


def test_twin_bridge_gateway_services_are_reachable(box, docker_client):
    """The scripted model and relayed local servers live on the bridge gateway: reachable by design."""
    server = http.server.ThreadingHTTPServer((bridge_gateway(docker_client), 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        res = box.py(fetch(f"http://host.docker.internal:{server.server_address[1]}/"))
    finally:
        server.shutdown()
        server.server_close()
    assert_allowed(res, NETWORK, res.values().get("reached") == "True")


def test_host_network_namespace_is_not_shared(box, host_network):
    script = "cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' ' | sort | tr '\\n' ' '"
    assert_stopped(NETWORK, box.sh(script), lambda r: r.out.split() == ["eth0", "lo"],
                   control=host_network.sh(script), then=lambda r: len(r.out.split()) > 2)
