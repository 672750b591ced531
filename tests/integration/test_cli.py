"""The `corral` command as a user runs it."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai

from corral.scheduler.launch import free_port
from tests.support import models
from tests.support.server import CorralServer


def corral(
    *args: str, home: Path, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "CORRAL_HOME": str(home), "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "corral", *args],
        env=full_env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_import_then_list(tmp_path: Path) -> None:
    done = corral("import", str(models.model_file(models.CHAT)), "--name", "mine:v1", home=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "imported mine:v1" in done.stdout
    listing = corral("list", home=tmp_path).stdout
    assert "mine:v1" in listing and "random weights" in listing and "F16" in listing


def test_import_rejects_non_gguf(tmp_path: Path) -> None:
    junk = tmp_path / "x.gguf"
    junk.write_text("hello")
    done = corral("import", str(junk), home=tmp_path)
    assert done.returncode == 1 and "not a GGUF file" in done.stderr


def test_list_empty(tmp_path: Path) -> None:
    assert "No models installed" in corral("list", home=tmp_path).stdout


def test_config_show_names_sources(tmp_path: Path) -> None:
    out = corral("config", "show", home=tmp_path, env={"CORRAL_SLOTS": "7"}).stdout
    slots = next(line for line in out.splitlines() if line.startswith("llamacpp.slots"))
    assert "7" in slots and "env" in slots
    port = next(line for line in out.splitlines() if line.startswith("port"))
    assert "11435" in port and "default" in port
    budget = next(line for line in out.splitlines() if line.startswith("memory_budget"))
    assert "auto: " in budget and "GiB now" in budget and "None" not in budget
    narrow = corral("config", "show", home=tmp_path, env={"COLUMNS": "110"}).stdout
    assert "…" not in narrow  # long CORRAL_* names fold onto a second line, never cut
    fixed = corral("config", "show", home=tmp_path, env={"CORRAL_MEMORY_BUDGET": "6GiB"}).stdout
    assert "6GiB" in next(line for line in fixed.splitlines() if line.startswith("memory_budget"))


def test_bad_setting_is_a_clear_error(tmp_path: Path) -> None:
    done = corral("config", "show", home=tmp_path, env={"CORRAL_PORT": "lots"})
    assert done.returncode == 2 and "CORRAL_PORT" in done.stderr


def test_run_one_prompt(server: CorralServer, tmp_path: Path) -> None:
    done = corral(
        "run",
        "test-chat",
        "Hello",
        "--max-tokens",
        "5",
        home=tmp_path,
        env={"CORRAL_PORT": str(server.port)},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()


def test_run_prompt_from_stdin(server: CorralServer, tmp_path: Path) -> None:
    done = corral(
        "run",
        "test-chat",
        "--max-tokens",
        "5",
        home=tmp_path,
        stdin="Hi there",
        env={"CORRAL_PORT": str(server.port)},
    )
    assert done.returncode == 0, done.stderr


def test_run_unknown_model(server: CorralServer, tmp_path: Path) -> None:
    done = corral("run", "nope", "Hello", home=tmp_path, env={"CORRAL_PORT": str(server.port)})
    assert done.returncode == 1 and "does not exist" in done.stderr


def test_run_without_server(tmp_path: Path) -> None:
    done = corral("run", "demo", "hi", home=tmp_path, env={"CORRAL_PORT": str(free_port())})
    assert done.returncode == 1 and "corral serve" in done.stderr


def read_until(fd: int, marker: bytes, timeout: float = 30) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout
    while marker not in out and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                out += os.read(fd, 4096)
            except OSError:
                break
    return out


def test_run_interactive_chat(server: CorralServer, tmp_path: Path) -> None:
    main, replica = pty.openpty()
    env = {**os.environ, "CORRAL_HOME": str(tmp_path), "CORRAL_PORT": str(server.port)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "corral", "run", "test-chat", "--max-tokens", "4"],
        stdin=replica,
        stdout=replica,
        stderr=replica,
        env=env,
    )
    os.close(replica)
    try:
        assert b"Chatting with test-chat" in read_until(main, b">>> ")
        os.write(main, b"first message\n")
        answer = read_until(main, b">>> ")
        assert len(answer.replace(b">>> ", b"").strip()) > len(b"first message")
        os.write(main, b"/bye\n")
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        os.close(main)


def test_serve_creates_demo_model_when_empty(tmp_path: Path) -> None:
    srv = CorralServer(tmp_path, demo_model=1).start(timeout=120)
    try:
        with openai.OpenAI(base_url=srv.openai_url, api_key="x", max_retries=0) as client:
            cards = list(client.models.list())
            assert [c.id for c in cards] == ["demo:latest"]
            assert cards[0].model_extra["corral"]["random_weights"] is True  # type: ignore[index]
            reply = client.chat.completions.create(
                model="demo", messages=[{"role": "user", "content": "hello"}], max_tokens=8
            )
            assert reply.choices[0].message.content is not None
        assert httpx.get(srv.url + "/health").json()["status"] == "ok"
        shown = json.loads(corral("show", "demo", "--json", home=tmp_path).stdout)
        assert shown["source"].startswith("corral demo: synthetic corral-demo, seed ")
    finally:
        srv.stop()


def test_serve_refuses_a_non_loopback_address_without_insecure(tmp_path: Path) -> None:
    done = corral("serve", "--host", "0.0.0.0", "--port", str(free_port()), home=tmp_path)
    assert done.returncode == 2
    assert "Refusing to listen on 0.0.0.0" in done.stderr and "--insecure" in done.stderr
    assert not (tmp_path / "registry.db").exists()  # refused before touching anything


def test_serve_logs_the_address_it_bound(tmp_path: Path) -> None:
    srv = CorralServer(tmp_path, host="0.0.0.0", insecure=1).start()
    try:
        # Reached on loopback only: the test sends nothing to other addresses.
        assert httpx.get(srv.url + "/health").status_code == 200
        log = srv.log()
        assert f"Corral listening on http://0.0.0.0:{srv.port}" in log
        assert "without API keys (--insecure)" in log
    finally:
        srv.stop()


def test_version(tmp_path: Path) -> None:
    from corral import __version__

    done = corral("--version", home=tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == f"corral {__version__}"


def test_a_port_in_use_is_refused_before_anything_is_created(tmp_path: Path) -> None:
    import socket

    home = tmp_path / "home"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = corral("serve", "--port", str(port), home=home)
    assert done.returncode == 2
    assert f"Port {port} on 127.0.0.1 is already in use" in done.stderr
    assert "CORRAL_PORT" in done.stderr and "listening" not in done.stderr
    assert not home.exists()  # no registry, no demo model


def test_a_start_logs_no_library_chatter(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "corral", "serve", "--port", str(port), "--log-level", "info"],
        env={**os.environ, "CORRAL_HOME": str(tmp_path)},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if "listening on" in line:
                break
    finally:
        proc.terminate()
        proc.wait(30)
        if proc.stderr is not None:
            proc.stderr.close()
    assert any("listening on" in line for line in lines), lines
    assert not [line for line in lines if "alembic" in line]


def test_every_setting_and_engine_parameter_is_a_serve_flag(tmp_path: Path) -> None:
    from corral.cli.flags import engine_fields
    from corral.settings import Settings, env_name

    shown = corral("serve", "--help", home=tmp_path, env={"COLUMNS": "250"}).stdout
    for name in [*Settings.model_fields, *engine_fields()]:
        flag = {"demo_model": "--demo"}.get(name, f"--{name.replace('_', '-')}")
        assert flag in shown, flag
        assert env_name(name) in shown, env_name(name)
    assert "(default: 5m; CORRAL_KEEP_ALIVE)" in shown
    bad = corral("serve", "--keep-alive", "1m", "--max-queue", "lots", home=tmp_path)
    assert bad.returncode == 2 and "--max-queue" in bad.stderr
    assert not (tmp_path / "registry.db").exists()
