"""The rules of ``corral.registry.access``: which local paths the API may read, which
addresses pulls may connect to. Nothing here sends a byte beyond loopback: private
targets are tested with resolved address lists and a stubbed resolver."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from corral.errors import LocalPathRefused, PrivateAddressRefused
from corral.registry import access
from corral.registry.access import (
    PullGuard,
    allowed_path,
    check_addresses,
    directory_files,
    non_public,
)
from corral.registry.pulls import Pulls
from corral.registry.store import Registry
from tests.support import models

# --- local paths ------------------------------------------------------------------------


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    (allowed / "a.gguf").write_bytes(b"GGUF")
    (outside / "secret").write_text("secret")
    return allowed, outside


def test_a_path_inside_an_import_dir_is_its_real_path(dirs: tuple[Path, Path]) -> None:
    allowed, _ = dirs
    assert allowed_path(allowed / "a.gguf", [str(allowed)]) == allowed / "a.gguf"
    assert allowed_path(allowed, [allowed]) == allowed
    (allowed / "sub").mkdir()
    (allowed / "sub" / "inner.gguf").symlink_to(allowed / "a.gguf")  # a link that stays inside
    assert allowed_path(allowed / "sub" / "inner.gguf", [allowed]) == allowed / "a.gguf"


@pytest.mark.parametrize(
    "relative",
    ["outside/secret", "outside", "allowed/../outside/secret", "allowed-not/x", "nowhere/at/all"],
)
def test_a_path_outside_the_import_dirs_is_refused(
    dirs: tuple[Path, Path], tmp_path: Path, relative: str
) -> None:
    (tmp_path / "allowed-not").mkdir()  # a sibling whose name starts like the allowed dir
    with pytest.raises(LocalPathRefused) as refused:
        allowed_path(tmp_path / relative, [dirs[0]])
    assert refused.value.status == 403 and refused.value.code == "local_path_refused"
    message = refused.value.message
    assert "CORRAL_IMPORT_DIRS" in message and "without a server are not limited" in message


def test_no_import_dirs_means_no_path(dirs: tuple[Path, Path]) -> None:
    with pytest.raises(LocalPathRefused):
        allowed_path(dirs[0] / "a.gguf", [])


def test_a_link_out_of_an_import_dir_is_refused_without_saying_where_it_points(
    dirs: tuple[Path, Path],
) -> None:
    allowed, outside = dirs
    link = allowed / "link.gguf"
    link.symlink_to(outside / "secret")
    with pytest.raises(LocalPathRefused) as refused:
        allowed_path(link, [allowed], given="link.gguf")
    assert "'link.gguf'" in refused.value.message and str(outside) not in refused.value.message


def test_the_refusal_is_the_same_whether_the_path_exists(dirs: tuple[Path, Path]) -> None:
    allowed, outside = dirs
    messages = []
    for name in ("secret", "missing"):
        with pytest.raises(LocalPathRefused) as refused:
            allowed_path(outside / name, [allowed], given="X")
        messages.append(refused.value.message)
    assert messages[0] == messages[1]


def test_directory_files_refuses_a_link_out_and_lists_real_paths(dirs: tuple[Path, Path]) -> None:
    allowed, outside = dirs
    model = allowed / "model"
    (model / "sub").mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "sub" / "w.onnx").write_bytes(b"onnx")
    (model / ".hidden").write_text("x")
    (model / "linked-dir").symlink_to(allowed)  # a linked directory is never entered
    assert directory_files(model, [allowed]) == {
        "config.json": model / "config.json",
        "sub/w.onnx": model / "sub" / "w.onnx",
    }
    (model / "tokenizer.json").symlink_to(outside / "secret")
    assert "tokenizer.json" in directory_files(model)  # the CLI's own imports: not limited
    with pytest.raises(LocalPathRefused):
        directory_files(model, [allowed])
    (model / "tokenizer.json").unlink()
    (model / "escape").symlink_to(outside)  # a link to a directory outside
    with pytest.raises(LocalPathRefused):
        directory_files(model, [allowed])


def test_registry_import_outside_the_dirs_reads_nothing(
    dirs: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    allowed, outside = dirs
    registry = Registry(tmp_path / "home")
    pulls = Pulls(registry, downloads_dir=tmp_path / "home" / "downloads", disk_reserve=0)
    looked: list[str] = []
    real_stat = Path.stat

    def stat(self: Path, *args: Any, **kwargs: Any) -> Any:
        if str(self).startswith(str(outside)):
            looked.append(str(self))
        return real_stat(self, *args, **kwargs)

    monkeypatch.setattr(Path, "stat", stat)
    try:
        for target in (outside, outside / "secret", outside / "missing"):
            with pytest.raises(LocalPathRefused):
                registry.import_path(target, import_dirs=[str(allowed)])
            for ref in (str(target), target.as_uri()):
                with pytest.raises(LocalPathRefused):
                    pulls.submit(ref, import_dirs=[str(allowed)])
        assert looked == []
        assert registry.list() == [] and pulls.list() == []
        assert not (tmp_path / "home" / "blobs").exists() or not any(
            (tmp_path / "home" / "blobs").iterdir()
        )
        # The registry's own API (the CLI without a server, tests) is not limited.
        source = outside / "m.gguf"
        source.write_bytes(models.model_file(models.EMBED).read_bytes())
        assert registry.import_path(source).name == "m:latest"
    finally:
        pulls.close()
        registry.close()


def test_a_bare_name_is_not_looked_up_for_the_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from corral.errors import InvalidReference
    from corral.registry.refs import parse_reference

    (tmp_path / "Documents").mkdir()
    monkeypatch.chdir(tmp_path)
    assert parse_reference("Documents").kind == "path"  # the CLI: what is here
    with pytest.raises(InvalidReference):  # the API: the same answer whatever exists
        parse_reference("Documents", probe=False)
    ref = parse_reference("file:///etc/passwd")
    assert ref.kind == "path" and ref.path == Path("/etc/passwd")


# --- network addresses ------------------------------------------------------------------

PRIVATE = [
    "127.0.0.1",
    "127.8.9.10",
    "10.0.0.1",
    "172.16.5.4",
    "192.168.1.1",
    "169.254.169.254",
    "100.64.0.1",
    "224.0.0.251",
    "0.0.0.0",
    "240.0.0.1",
    "255.255.255.255",
    "::1",
    "::",
    "fc00::1",
    "fd12:3456::1",
    "fe80::1%eth0",
    "ff02::1",
    "::ffff:10.0.0.1",
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
]
PUBLIC = ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "2a00:1450:4001:81b::200e"]


@pytest.mark.parametrize("address", PRIVATE)
def test_private_addresses_are_not_public(address: str) -> None:
    assert non_public(address)
    with pytest.raises(PrivateAddressRefused):
        check_addresses("example.org", [address])


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_public(address: str) -> None:
    assert not non_public(address)
    check_addresses("example.org", [address])


def test_every_address_is_checked_and_the_message_names_only_the_host() -> None:
    with pytest.raises(PrivateAddressRefused) as refused:
        check_addresses("models.example", ["93.184.216.34", "10.0.0.1"])
    assert refused.value.status == 403 and refused.value.code == "private_address_refused"
    assert "models.example" in refused.value.message
    assert "10.0.0.1" not in refused.value.message
    assert "CORRAL_ALLOW_PRIVATE_PULLS" in refused.value.message


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A stub DNS: names to addresses, counting lookups; connecting anywhere but
    loopback fails the test."""
    state: dict[str, Any] = {"names": {}, "lookups": []}
    real_getaddrinfo = socket.getaddrinfo
    real_connect = socket.create_connection

    def getaddrinfo(host: str, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in state["names"]:
            state["lookups"].append(host)
            family = {True: socket.AF_INET6, False: socket.AF_INET}
            return [
                (family[":" in a], socket.SOCK_STREAM, 6, "", (a, port))
                for a in state["names"][host]
            ]
        return real_getaddrinfo(host, port, *args, **kwargs)

    def create_connection(address: Any, *args: Any, **kwargs: Any) -> Any:
        assert address[0] in ("127.0.0.1", "::1", "localhost"), f"connected to {address}"
        return real_connect(address, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket, "create_connection", create_connection)
    return state


def test_a_private_target_is_refused_after_one_lookup_before_connecting(
    resolver: dict[str, Any],
) -> None:
    resolver["names"]["internal.example"] = ["10.0.0.1"]
    guard = PullGuard(trusted_hosts=frozenset())
    with pytest.raises(PrivateAddressRefused):
        guard.check_url("http://internal.example/x.gguf")
    assert resolver["lookups"] == ["internal.example"]
    with guard.client() as client, pytest.raises(PrivateAddressRefused):
        client.get("http://internal.example:8080/x.gguf")
    assert resolver["lookups"] == ["internal.example"] * 2


def test_allowed_and_trusted_hosts_are_not_checked(resolver: dict[str, Any]) -> None:
    resolver["names"]["internal.example"] = ["10.0.0.1"]
    assert PullGuard(allow_private=True).addresses("internal.example", 80) is None
    trusted = PullGuard(trusted_hosts=frozenset({"internal.example"}))
    assert trusted.addresses("internal.example", 80) is None
    assert resolver["lookups"] == []


def test_the_hub_endpoint_host_is_trusted(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    assert access.hub_hosts() == {"127.0.0.1"}
    assert PullGuard().addresses("127.0.0.1", 1234) is None  # any port of that host
    with pytest.raises(PrivateAddressRefused):
        PullGuard().addresses("localhost", 1234)


class _Handler(BaseHTTPRequestHandler):
    seen: ClassVar[list[tuple[str, str | None]]] = []
    redirect: ClassVar[str | None] = None

    def do_GET(self) -> None:
        type(self).seen.append((self.path, self.headers.get("Host")))
        if self.redirect:
            self.send_response(302)
            self.send_header("Location", self.redirect)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def web() -> Iterator[tuple[int, type[_Handler]]]:
    handler = type("Handler", (_Handler,), {"seen": [], "redirect": None})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], handler
    server.shutdown()
    server.server_close()


def test_the_connection_goes_to_the_address_checked_and_redirects_are_checked(
    resolver: dict[str, Any], web: tuple[int, type[_Handler]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``models.example`` stands for a public host (its address is this test's
    loopback server, taken as public here); it redirects to a private one."""
    port, handler = web
    resolver["names"]["models.example"] = ["127.0.0.1"]
    resolver["names"]["internal.example"] = ["10.0.0.1"]
    monkeypatch.setattr(access, "non_public", lambda address: address != "127.0.0.1")
    guard = PullGuard(trusted_hosts=frozenset())
    with guard.client(follow_redirects=True) as client:
        reply = client.get(f"http://models.example:{port}/x.gguf")
        assert reply.text == "ok"
        assert handler.seen == [("/x.gguf", f"models.example:{port}")]
        assert resolver["lookups"] == ["models.example"]  # once: checked, then connected to
        handler.redirect = "http://internal.example/metadata"
        with pytest.raises(PrivateAddressRefused):
            client.get(f"http://models.example:{port}/y.gguf")
    assert [path for path, _ in handler.seen] == ["/x.gguf", "/y.gguf"]
    assert resolver["lookups"] == ["models.example", "models.example", "internal.example"]


def test_a_failed_request_to_a_private_address_does_not_say_why() -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    url = f"http://127.0.0.1:{port}/x.gguf"
    with (
        PullGuard(allow_private=True).client() as client,
        pytest.raises(httpx.ConnectError) as failed,
    ):
        client.get(url)
    assert "refused" in str(failed.value).lower()  # what httpx says...
    assert access.failure_detail(url, failed.value) == "the connection failed"  # ...we don't
