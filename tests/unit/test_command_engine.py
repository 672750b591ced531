"""The command engine's gateway side: templates, parameters, the worker command, memory."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest

from corral.engines.catalog import load_catalog
from corral.engines.command.descriptor import CommandParams, descriptor
from corral.engines.command.template import TemplateError, check, expand
from corral.engines.descriptor import LaunchContext
from corral.engines.foreign import SUPERVISOR
from corral.errors import EngineLoadError, InvalidRequest
from corral.registry.records import Capability
from corral.registry.store import Registry
from tests.support.models import CHAT, EMBED, model_file

CTX = LaunchContext(host="127.0.0.1", port=43210, log_level="info", spool_dir=Path("/tmp/s"))


def test_macros_fill_arguments_without_a_shell() -> None:
    argv = expand(
        "llama-server -m '${MODEL_PATH}' --port ${PORT} --alias=${MODEL_NAME} ; rm -rf /",
        {"MODEL_PATH": "/my models/q 4.gguf", "PORT": "9", "MODEL_NAME": "q:latest"},
    )
    assert argv == (
        "llama-server", "-m", "/my models/q 4.gguf", "--port", "9", "--alias=q:latest",
        ";", "rm", "-rf", "/",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("template", "error"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("server --port ${PROT}", "unknown macro ${PROT}"),
        ("server 'unclosed", "cannot be split"),
    ],
)
def test_bad_templates_say_what_is_wrong(template: str, error: str) -> None:
    with pytest.raises(TemplateError, match=error.replace("$", r"\$")):
        check(template)


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    store = Registry(tmp_path)
    store.import_path(model_file(CHAT), "chat")
    store.import_path(model_file(EMBED), "embed")
    return store


def test_a_declared_command_runs_under_the_supervisor(registry: Registry) -> None:
    catalog = load_catalog(environ={})
    record = registry.configure(
        "chat",
        params={
            "engine": "command",
            "command": "llama-server -m ${MODEL_PATH} --port ${PORT} -np ${SLOTS} "
            "-c ${CONTEXT_TOTAL} -t ${THREADS}",
            "slots": 3,
            "context": 1024,
            "threads": 2,
            "served_name": "upstream",
            "health_path": "/v1/models",
            "start_timeout": 120,
            "env_vars": {"CUDA_VISIBLE_DEVICES": "1"},
        },
        aliases=[],
    )
    assert catalog.for_record(record).name == "command"
    command = catalog.command(record, catalog.params(record), CTX)
    assert command.argv[:6] == (sys.executable, "-m", SUPERVISOR, "--grace", "10.0", "--")
    assert command.argv[6:] == (
        "llama-server", "-m", str(record.path), "--port", "43210", "-np", "3",
        "-c", "3072", "-t", "2",
    )  # fmt: skip
    assert command.health_path == "/v1/models" and command.start_timeout == 120
    assert command.env == {"CUDA_VISIBLE_DEVICES": "1"}
    assert command.foreign is not None and command.foreign.served_name == "upstream"


def test_a_model_without_a_command_fails_to_load_saying_so(registry: Registry) -> None:
    catalog = load_catalog(environ={})
    record = registry.configure("chat", params={"engine": "command"}, aliases=[])
    with pytest.raises(EngineLoadError, match="has no command"):
        catalog.command(record, catalog.params(record), CTX)


def test_bad_parameters_are_refused_when_set_naming_them(registry: Registry) -> None:
    catalog = load_catalog(environ={})
    record = registry.get("chat")
    for params, name in [
        ({"engine": "command", "command": "srv ${NOPE}"}, "command"),
        ({"engine": "command", "command": "srv", "ram_estimate": "lots"}, "ram_estimate"),
        ({"engine": "command", "command": "srv", "health_path": "health"}, "health_path"),
        ({"engine": "command", "command": "srv", "capabilities": ["dance"]}, "capabilities"),
    ]:
        with pytest.raises(InvalidRequest, match=f"command parameter {name}"):
            catalog.check_configuration(record, params)


def test_capabilities_come_from_the_model_unless_declared(registry: Registry) -> None:
    catalog = load_catalog(environ={})
    chat = registry.configure("chat", params={"engine": "command", "command": "s"}, aliases=[])
    embed = registry.configure("embed", params={"engine": "command", "command": "s"}, aliases=[])
    assert catalog.capabilities(chat) == {Capability.CHAT, Capability.COMPLETION}
    assert catalog.capabilities(embed) == {Capability.EMBEDDINGS}
    declared = replace(chat, params={**chat.params, "capabilities": ["embeddings"]})
    assert catalog.capabilities(declared) == {Capability.EMBEDDINGS}


def test_memory_is_llamacpps_for_a_gguf_or_as_declared(registry: Registry) -> None:
    record = registry.get("chat")
    guessed = descriptor.estimate(record, CommandParams(command="s", slots=2))
    assert guessed.weights == record.size and guessed.kv_cache > 0 and guessed.vram == 0
    declared = descriptor.estimate(
        record, CommandParams(command="s", ram_estimate="3GiB", vram_estimate="20GiB")
    )
    assert declared.total == 3 << 30 and declared.vram == 20 << 30
