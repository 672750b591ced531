from __future__ import annotations

import pickle
import tomllib
from pathlib import Path
from textwrap import dedent
from typing import Any

import jsonschema
import pytest

from corral.registry.declared import (
    LOCK_HEADER,
    DeclarationError,
    DeclarationErrors,
    DeclaredModel,
    LockedFile,
    LockedModel,
    LockFile,
    load_declarations,
    load_schema,
    read_lock,
    write_lock,
)

ROOT = Path(__file__).resolve().parents[2]
SHA_A = "a" * 64
SHA_B = "0123456789abcdef" * 4


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Relative paths, so error strings read exactly as a user would see them.
    monkeypatch.chdir(tmp_path)


def write(text: str, name: str = "corral.yaml") -> Path:
    path = Path(name)
    path.write_text(dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def declare(text: str) -> list[DeclaredModel]:
    return load_declarations(write(text))


def problems(text: str) -> list[DeclarationError]:
    with pytest.raises((DeclarationError, DeclarationErrors)) as info:
        load_declarations(write(text))
    assert isinstance(info.value, DeclarationError | DeclarationErrors)
    return info.value.errors


def where(errors: list[DeclarationError]) -> list[tuple[int | None, str]]:
    return [(error.line, error.key) for error in errors]


# --- the schema ---------------------------------------------------------------------------


def test_schema_is_valid_draft_2020_12_and_every_property_is_described() -> None:
    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"

    def described(sub: dict[str, Any]) -> bool:
        if "$ref" in sub:
            sub = schema["$defs"][sub["$ref"].removeprefix("#/$defs/")]
        return bool(sub.get("description"))

    def walk(sub: dict[str, Any], at: str) -> None:
        if sub.get("type") == "object":
            assert "additionalProperties" in sub, at
        for name, prop in sub.get("properties", {}).items():
            assert described(prop), f"{at}.{name}"
            walk(prop, f"{at}.{name}")

    walk(schema, "")
    for name, definition in schema["$defs"].items():
        assert definition.get("description"), name
        walk(definition, name)


def test_schema_ships_as_package_data() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "registry/*.json" in pyproject["tool"]["setuptools"]["package-data"]["corral"]


# --- good files ---------------------------------------------------------------------------


def test_full_declaration() -> None:
    models = declare(
        f"""
        version: 1
        defaults:
          context: 4096
          keep_alive: 10m
        models:
          qwen:
            source: hf.co/Qwen/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M
            revision: main
            engine: llamacpp
            aliases: [chat, default:v1]
            context: 8192
            threads: 1
            slots: 4
            keep_alive: 5m
            preload: true
            pinned: false
          embed:v2:
            source: ./nomic.gguf
            sha256: {SHA_B.upper()}
        """
    )
    assert models == [
        DeclaredModel(
            name="qwen:latest",
            source="hf.co/Qwen/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M",
            revision="main",
            engine="llamacpp",
            aliases=("chat:latest", "default:v1"),
            params={
                "context": 8192,
                "threads": 1,
                "slots": 4,
                "keep_alive": "5m",
                "preload": True,
                "pinned": False,
            },
        ),
        DeclaredModel(
            name="embed:v2",
            source="./nomic.gguf",
            sha256=SHA_B,  # lowercased
            params={"context": 4096, "keep_alive": "10m"},
        ),
    ]
    hash(models[0])  # usable in sets despite the params dict


def test_defaults_merge_under_model_values_and_only_given_params_appear() -> None:
    a, b, c = declare(
        """
        version: 1
        defaults: {context: 2048, slots: 2, pinned: true}
        models:
          a: {source: ./a.gguf}
          b: {source: ./b.gguf, slots: 8, pinned: false, threads: 3}
          c: {source: ./c.gguf, context: 4096.0}
        """
    )
    assert a.params == {"context": 2048, "slots": 2, "pinned": True}
    assert b.params == {"context": 2048, "threads": 3, "slots": 8, "pinned": False}
    assert c.params == {"context": 4096, "slots": 2, "pinned": True}
    assert type(c.params["context"]) is int
    no_defaults = declare("version: 1\nmodels:\n  a: {source: ./a.gguf}\n")
    assert no_defaults[0].params == {}


def test_engine_params_block_merges_key_by_key_and_names_any_engine() -> None:
    a, b = declare(
        """
        version: 1
        defaults: {params: {batch_size: 256, flash_attention: "off"}}
        models:
          a: {source: ./a.gguf, engine: fake, params: {tokens: 3, batch_size: 128}}
          b: {source: ./b.gguf, slots: 2}
        """
    )
    assert a.engine == "fake"
    assert a.params == {"batch_size": 128, "flash_attention": "off", "tokens": 3}
    assert b.params == {"slots": 2, "batch_size": 256, "flash_attention": "off"}
    bad = problems("version: 1\nmodels:\n  a: {source: ./a.gguf, params: {Bad-Key: 1}}\n")
    assert bad and bad[0].line == 3


def test_keep_alive_forms() -> None:
    good: list[object] = ["30s", "5m", "1h", "1h30m", "0", "-1", 0, -1, 300, "1.5h"]
    text = "version: 1\nmodels:\n" + "".join(
        f"  m{i}: {{source: ./x.gguf, keep_alive: {value!r}}}\n" for i, value in enumerate(good)
    )
    assert [m.params["keep_alive"] for m in declare(text)] == good
    errors = problems(
        """
        version: 1
        models:
          a: {source: ./x.gguf, keep_alive: 5 minutes}
          b: {source: ./x.gguf, keep_alive: -2}
          c: {source: ./x.gguf, keep_alive: true}
        """
    )
    assert where(errors) == [
        (3, "models.a.keep_alive"),
        (4, "models.b.keep_alive"),
        (5, "models.c.keep_alive"),
    ]
    assert errors[0].message == "'5 minutes' is not a duration like 30s, 5m, 1h, 0 or -1"
    assert errors[1].message == "-2 is less than the minimum of -1"
    assert errors[2].message == "expected a string or an integer, got True"


def test_empty_models_and_odd_but_valid_names() -> None:
    assert declare("version: 1\nmodels: {}\n") == []
    # Keys are taken as written: 123 is a name, not an integer; a "/" namespaces it.
    models = declare("version: 1\nmodels:\n  123: {source: ./a}\n  org/m:q4: {source: ./b}\n")
    assert [m.name for m in models] == ["123:latest", "org/m:q4"]


def test_anchors_and_merge_keys_share_settings() -> None:
    a, b = declare(
        """
        version: 1
        models:
          a: &base
            source: ./a.gguf
            slots: 2
            context: 1024
          b:
            <<: *base
            source: ./b.gguf
            slots: 3
        """
    )
    assert a.params == {"context": 1024, "slots": 2}
    assert (b.source, b.params) == ("./b.gguf", {"context": 1024, "slots": 3})


# --- bad files: each problem with its line and key ----------------------------------------


def test_out_of_range_value_reads_like_a_compiler_error() -> None:
    (error,) = problems(
        """
        version: 1
        models:
          qwen:
            source: ./q.gguf
            slots: 0
        """
    )
    assert str(error) == "corral.yaml:5: models.qwen.slots: 0 is less than the minimum of 1"
    assert (error.path, error.line, error.key) == ("corral.yaml", 5, "models.qwen.slots")
    assert error.message == "0 is less than the minimum of 1"


def test_wrong_types() -> None:
    errors = problems(
        """
        version: 1
        models:
          qwen:
            source: ./q.gguf
            threads: four
            preload: maybe
            aliases: chat
          empty:
        """
    )
    assert where(errors) == [
        (5, "models.qwen.threads"),
        (6, "models.qwen.preload"),
        (7, "models.qwen.aliases"),
        (8, "models.empty"),
    ]
    assert [e.message for e in errors] == [
        "expected an integer, got 'four'",
        "expected true or false, got 'maybe'",
        "expected a list, got 'chat'",
        "expected a mapping, got nothing",
    ]


def test_unknown_keys_are_reported_at_their_own_line_with_a_suggestion() -> None:
    errors = problems(
        """
        version: 1
        defaults:
          contxt: 4096
        models:
          qwen:
            source: ./q.gguf
            slot: 4
            colour: blue
        """
    )
    assert where(errors) == [
        (3, "defaults.contxt"),
        (7, "models.qwen.slot"),
        (8, "models.qwen.colour"),
    ]
    assert errors[0].message == "unknown key 'contxt'; did you mean 'context'?"
    assert errors[1].message == "unknown key 'slot'; did you mean 'slots'?"
    assert errors[2].message.startswith("unknown key 'colour'; expected one of aliases, context,")


def test_missing_keys_point_at_the_mapping_that_lacks_them() -> None:
    errors = problems(
        """
        version: 1
        models:
          ok: {source: ./a.gguf}
          qwen:
            slots: 2
        """
    )
    assert where(errors) == [(4, "models.qwen")]
    assert errors[0].message == "'source' is a required property"

    (error,) = problems(
        """
        # my models
        version: 1
        """
    )
    assert (error.line, error.key, error.message) == (2, "", "'models' is a required property")
    assert str(error) == "corral.yaml:2: 'models' is a required property"


def test_bad_version() -> None:
    (error,) = problems("models: {}\nversion: 2\n")
    assert str(error) == "corral.yaml:2: version: expected 1, got 2"
    (error,) = problems("version: '1'\nmodels: {}\n")
    assert error.message == "expected 1, got '1'"


def test_invalid_model_names_and_aliases() -> None:
    errors = problems(
        """
        version: 1
        models:
          bad name:
            source: ./a.gguf
            aliases: [ok, "no way", x/../y]
        """
    )
    assert where(errors) == [
        (3, "models.bad name"),
        (5, "models.bad name.aliases[1]"),
        (5, "models.bad name.aliases[2]"),
    ]
    assert errors[0].message.startswith("'bad name' is not a valid model name")


def test_yaml_syntax_errors_carry_the_problem_line() -> None:
    (error,) = problems(
        """
        version: 1
        models:
          qwen
            source: ./q.gguf
        """
    )
    assert (error.line, error.key) == (4, "")
    assert error.message == "invalid YAML: mapping values are not allowed here"

    (error,) = problems("version: 1\nmodels:\n  q:\n    aliases: [a, b\n    slots: 2\n")
    assert error.line == 5
    assert error.message.startswith("invalid YAML: expected ',' or ']'")
    assert "flow sequence at line 4" in error.message

    (error,) = problems("version: 1\n---\nversion: 1\n")
    assert error.line == 2 and "single document" in error.message


def test_unusable_files() -> None:
    for text in ("", "# nothing yet\n"):
        (error,) = problems(text)
        assert str(error) == "corral.yaml:1: the file is empty"
    (error,) = problems("- a\n- b\n")
    assert (error.line, error.key, error.message) == (1, "", "expected a mapping, got a list")
    Path("corral.yaml").write_bytes(b"version: 1\nmodels:\n  caf\xe9: {}\n")
    with pytest.raises(DeclarationError) as info:
        load_declarations(Path("corral.yaml"))
    assert str(info.value) == "corral.yaml:3: not UTF-8 text"
    (error,) = problems("version: 1\nmodels:\n  a: !secret x\n")
    assert error.line == 3 and "!secret" in error.message
    with pytest.raises(FileNotFoundError):
        load_declarations(Path("missing.yaml"))


def test_alias_bombs_and_cycles_are_refused() -> None:
    bomb = ["a: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    bomb += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 7)]
    (error,) = problems("\n".join(bomb) + "\n")
    assert error.message.startswith("too large")
    (error,) = problems("version: 1\nmodels:\n  a: &a\n    source: x\n    aliases: [*a]\n")
    assert error.message == "an alias refers to a value that contains it"


def test_duplicate_keys() -> None:
    errors = problems(
        """
        version: 1
        models:
          qwen:
            source: ./a.gguf
            slots: 2
            slots: 3
          qwen:
            source: ./b.gguf
        """
    )
    assert where(errors) == [(6, "models.qwen.slots"), (7, "models.qwen")]
    assert errors[0].message == "duplicate key 'slots' (first at line 5)"
    assert errors[1].message == "duplicate key 'qwen' (first at line 3)"


def test_names_that_collide_once_canonical() -> None:
    errors = problems(
        """
        version: 1
        models:
          a:
            source: ./a.gguf
            aliases: [chat, a]
          a:latest:
            source: ./b.gguf
          b:
            source: ./c.gguf
            aliases: [a:v2, chat:latest, b]
          a:v2:
            source: ./d.gguf
        """
    )
    assert where(errors) == [
        (5, "models.a.aliases[1]"),
        (6, "models.a:latest"),
        (10, "models.b.aliases[0]"),
        (10, "models.b.aliases[1]"),
        (10, "models.b.aliases[2]"),
    ]
    assert [e.message for e in errors] == [
        "alias 'a' is the model's own name (line 3)",
        "same model as 'a' (line 3): both are 'a:latest'",
        "alias 'a:v2' is the name of model 'a:v2' (line 11)",
        "alias 'chat:latest' is already an alias of 'a' (line 5)",
        "alias 'b' is the model's own name (line 8)",
    ]


def test_all_errors_at_once_sorted_by_line() -> None:
    with pytest.raises(DeclarationErrors) as info:
        load_declarations(
            write(
                """
                version: 3
                models:
                  b:
                    source: ./b.gguf
                    slots: 999
                  a:
                    sorce: ./a.gguf
                """
            )
        )
    assert str(info.value) == "\n".join(
        [
            "corral.yaml:1: version: expected 1, got 3",
            "corral.yaml:5: models.b.slots: 999 is greater than the maximum of 256",
            "corral.yaml:6: models.a: 'source' is a required property",
            "corral.yaml:7: models.a.sorce: unknown key 'sorce'; did you mean 'source'?",
        ]
    )


def test_errors_survive_pickling() -> None:
    error = DeclarationError("corral.yaml", 3, "models.a", "boom")
    copy = pickle.loads(pickle.dumps(DeclarationErrors([error])))
    assert str(copy) == "corral.yaml:3: models.a: boom"
    assert str(pickle.loads(pickle.dumps(error))) == str(error)
    assert str(DeclarationError("corral.yaml", None, "", "gone")) == "corral.yaml: gone"


# --- the lock file ------------------------------------------------------------------------

LOCK = LockFile(
    version=1,
    models={
        "qwen:latest": LockedModel(
            name="qwen:latest",
            source="hf.co/Qwen/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M",
            resolved="hf.co/Qwen/Qwen2.5-0.5B-Instruct-GGUF",
            revision="9217f5db79a29953eb74d5343926648285ec7e67",
            files=(LockedFile("qwen2.5-0.5b-instruct-q4_k_m.gguf", 491400032, SHA_A),),
        ),
        "embed:v2": LockedModel(
            name="embed:v2",
            source="https://example.com/models/nomic.gguf",
            resolved="https://example.com/models/nomic.gguf",
            revision=None,
            files=(LockedFile("nomic.gguf", 1234, SHA_B),),
        ),
        "split:q8": LockedModel(
            name="split:q8",
            source="org/split",
            resolved="hf.co/org/split",
            revision="1234567",  # all digits: must come back a string
            files=(
                LockedFile("m-00002-of-00002.gguf", 20, SHA_A),
                LockedFile("m-00001-of-00002.gguf", 10, SHA_B),
            ),
        ),
    },
)

EXPECTED_LOCK = f"""\
# Generated by `corral lock`. Do not edit.
version: 1
models:
  embed:v2:
    source: https://example.com/models/nomic.gguf
    resolved: https://example.com/models/nomic.gguf
    revision: null
    files:
    - path: nomic.gguf
      size: 1234
      sha256: {SHA_B}
  qwen:latest:
    source: hf.co/Qwen/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M
    resolved: hf.co/Qwen/Qwen2.5-0.5B-Instruct-GGUF
    revision: 9217f5db79a29953eb74d5343926648285ec7e67
    files:
    - path: qwen2.5-0.5b-instruct-q4_k_m.gguf
      size: 491400032
      sha256: {SHA_A}
  split:q8:
    source: org/split
    resolved: hf.co/org/split
    revision: '1234567'
    files:
    - path: m-00001-of-00002.gguf
      size: 10
      sha256: {SHA_B}
    - path: m-00002-of-00002.gguf
      size: 20
      sha256: {SHA_A}
"""


def test_lock_round_trip_and_stable_output(tmp_path: Path) -> None:
    path = Path("corral.lock")
    write_lock(path, LOCK)
    first = path.read_bytes()
    assert first.decode() == EXPECTED_LOCK
    assert first.startswith(LOCK_HEADER.encode())

    back = read_lock(path)
    split = LOCK.models["split:q8"]
    sorted_split = LockedModel(
        split.name, split.source, split.resolved, split.revision, split.files[::-1]
    )
    assert back == LockFile(version=1, models={**LOCK.models, "split:q8": sorted_split})
    assert list(back.models) == ["embed:v2", "qwen:latest", "split:q8"]

    write_lock(path, back)
    assert path.read_bytes() == first
    write_lock(path, LockFile(1, dict(reversed(LOCK.models.items()))))
    assert path.read_bytes() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corral.lock"]  # no temp files
    assert (path.stat().st_mode & 0o777) != 0o600  # shared like any file, not mkstemp's


def test_lock_with_no_models() -> None:
    write_lock(Path("corral.lock"), LockFile(1, {}))
    assert read_lock(Path("corral.lock")) == LockFile(1, {})


def test_write_lock_refuses_what_read_lock_would_refuse() -> None:
    path = Path("corral.lock")
    write_lock(path, LOCK)
    before = path.read_bytes()
    model = LOCK.models["embed:v2"]
    bad_locks = [
        LockFile(1, {"embed": model}),  # key is not the model's name
        LockFile(2, LOCK.models),
        LockFile(1, {"e:v": LockedModel("e:v", "x", "x", None, (LockedFile("f", -1, SHA_A),))}),
        LockFile(1, {"e:v": LockedModel("e:v", "x", "x", None, (LockedFile("f", 1, "XY"),))}),
        LockFile(1, {"x/../y:v": LockedModel("x/../y:v", "x", "x", None, ())}),
    ]
    for bad in bad_locks:
        with pytest.raises(ValueError):
            write_lock(path, bad)
    assert path.read_bytes() == before


def test_malformed_lock_files() -> None:
    path = write(
        f"""
        version: 1
        models:
          a:latest:
            source: ./a.gguf
            resolved: /m/a.gguf
            files:
            - path: a.gguf
              size: big
              sha256: {SHA_A}
              extra: 1
          b:
            source: ./b.gguf
            resolved: /m/b.gguf
            revision: null
            files: []
        """,
        name="corral.lock",
    )
    with pytest.raises(DeclarationErrors) as info:
        read_lock(path)
    assert [str(e) for e in info.value.errors] == [
        "corral.lock:3: models.a:latest: 'revision' is a required property",
        "corral.lock:8: models.a:latest.files[0].size: expected an integer, got 'big'",
        "corral.lock:10: models.a:latest.files[0].extra: unknown key 'extra'; "
        "expected one of path, sha256, size",
        "corral.lock:11: models.b: 'b' is not a canonical model name (name:tag)",
    ]

    for text, line, message in [
        ("version: 1\nmodels:\n  a:latest: [\n", 4, "invalid YAML: "),
        ("version: 9\nmodels: {}\n", 1, "version: expected 1, got 9"),
        ("version: 1\nmodels: {}\nmodels: {}\n", 3, "models: duplicate key 'models'"),
        ("version: 1\n", 1, "'models' is a required property"),
    ]:
        write(text, name="corral.lock")
        with pytest.raises(DeclarationError) as one:
            read_lock(path)
        assert one.value.line == line
        assert message in str(one.value)
