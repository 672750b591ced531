"""Schema coverage: the share of real-world JSON Schemas Corral enforces, next to llguidance's.

The corpus is what PyPI packages ship, so it runs offline once they are downloaded:

- SchemaStore schemas vendored in ``check-jsonschema`` (CI configs, compose files,
  GitHub workflows...): large, hand-written, every keyword in use;
- the JSON Schema of every pydantic model in the ``openai`` and ``anthropic`` SDKs
  (``model_json_schema()``): the shapes API and function-calling schemas take.

Each schema is compiled three ways: Corral's check (``corral.engines.guidance``:
strict, a 400 for anything it would not enforce), llguidance as Corral configures it,
and llguidance with its most permissive options (``lenient``: unknown keywords
ignored). Issue 13's target: Corral accepts at least 95% of what the permissive
llguidance compiles.

    pip download --no-deps check-jsonschema -d /tmp/corpus
    python bench/schema_coverage.py --wheels /tmp/corpus   # writes bench/out/schema_coverage.json
"""

from __future__ import annotations

import argparse
import collections
import importlib
import inspect
import json
import pkgutil
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

from llguidance import LLMatcher
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from corral.engines import guidance  # noqa: E402
from corral.errors import CorralError  # noqa: E402


def schemastore(wheels: Path) -> dict[str, Any]:
    out = {}
    for wheel in sorted(wheels.glob("check_jsonschema-*.whl")):
        with zipfile.ZipFile(wheel) as z:
            for name in z.namelist():
                if "/vendor/" in name and name.endswith(".json"):
                    out["schemastore:" + Path(name).stem] = json.loads(z.read(name))
    return out


def sdk_models(package: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    root = importlib.import_module(f"{package}.types")
    for info in pkgutil.walk_packages(root.__path__, prefix=f"{package}.types."):
        try:
            module = importlib.import_module(info.name)
        except Exception:
            continue
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, BaseModel) and obj.__module__ == info.name:
                try:
                    out[f"{package}:{name}"] = obj.model_json_schema()
                except Exception:
                    continue
    return out


def llguidance_compiles(schema: Any, lenient: bool) -> tuple[bool, str]:
    options = {**guidance.JSON_OPTIONS, "lenient": lenient}
    try:
        grammar = LLMatcher.grammar_from_json_schema(json.dumps(schema), defaults=options)
    except Exception as exc:
        return False, str(exc)
    failed, messages = LLMatcher.validate_grammar_with_warnings(
        grammar, None, limits=guidance.LIMITS
    )
    return not failed, (messages[0] if messages else "")


def corral_accepts(schema: Any, strict: bool = True) -> tuple[bool, str]:
    try:
        guidance.json_schema_grammar(schema, param="schema", strict=strict)
    except CorralError as exc:
        return False, exc.message
    return True, ""


def reason(message: str) -> str:
    """A refusal's kind, for the table: the keyword, or the first words."""
    found = re.search(r"uses ('[^']+')", message) or re.search(
        r"Unimplemented keys: \[([^\]]*)\]", message
    )
    if found:
        return found.group(1)
    return " ".join(message.split()[:8])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheels", type=Path, default=Path("/tmp/corpus"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "schema_coverage.json")
    args = parser.parse_args()
    corpus = {**schemastore(args.wheels), **sdk_models("openai"), **sdk_models("anthropic")}
    counts = collections.Counter()
    refusals: collections.Counter[str] = collections.Counter()
    by_source: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for name, schema in corpus.items():
        source = name.split(":")[0]
        ours, why = corral_accepts(schema)
        loose, _ = corral_accepts(schema, strict=False)
        strict, _ = llguidance_compiles(schema, lenient=False)
        lenient, _ = llguidance_compiles(schema, lenient=True)
        cells = (("corral", ours), ("loose", loose), ("strict", strict), ("lenient", lenient))
        for key, ok in cells:
            counts[key] += ok
            by_source[source][key] += ok
        by_source[source]["total"] += 1
        if not ours:
            refusals[reason(why)] += 1
    total = len(corpus)
    report = {
        "schemas": total,
        "corral": counts["corral"],
        "corral_strict_false": counts["loose"],
        "llguidance_strict": counts["strict"],
        "llguidance_lenient": counts["lenient"],
        "corral_vs_lenient": round(counts["corral"] / max(counts["lenient"], 1), 3),
        "corral_strict_false_vs_lenient": round(counts["loose"] / max(counts["lenient"], 1), 3),
        "by_source": {k: dict(v) for k, v in by_source.items()},
        "refusals": dict(refusals.most_common()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(
        "| source | schemas | Corral | Corral, strict: false | llguidance (Corral's options) "
        "| llguidance lenient |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    rows = [*sorted(by_source.items()), ("all", collections.Counter({**counts, "total": total}))]
    for source, c in rows:
        cells = [
            f"{c[k]} ({c[k] / c['total']:.0%})" for k in ("corral", "loose", "strict", "lenient")
        ]
        print(f"| {source} | {c['total']} | " + " | ".join(cells) + " |")
    print(
        f"Corral / lenient llguidance: {report['corral_vs_lenient']:.1%} strict, "
        f"{report['corral_strict_false_vs_lenient']:.1%} with strict: false"
    )
    print("refusals:", dict(refusals.most_common(12)))


if __name__ == "__main__":
    main()
