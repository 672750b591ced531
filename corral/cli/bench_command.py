"""What ``corral bench`` does with the registry: measure and keep a run, list the
history, compare two versions (``bench.py`` measures and renders)."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from corral.cli.bench import (
    Bench,
    BenchError,
    BenchPlan,
    comparison_table,
    history_table,
    machine_facts,
    results_table,
)
from corral.cli.client_auth import auth_headers
from corral.cli.registry import RegistryClient
from corral.settings import Settings


class BenchCommand:
    def __init__(
        self,
        client: RegistryClient,
        settings: Settings,
        console: Console,
        *,
        save: bool = True,
        as_json: bool = False,
    ) -> None:
        self.client = client
        self.settings = settings
        self.console = console
        self.save = save
        self.as_json = as_json

    def measure(self, name: str, plan: BenchPlan) -> dict[str, Any]:
        """Run ``plan`` on the version ``name`` means; show it; keep it (``save``)."""
        model = self.client.show(name)
        run = self._run(model, plan)
        if self.as_json:
            self.console.print_json(data=run)
        else:
            self.console.print(results_table(run["results"], title=model["name"]))
            if "id" in run:
                self.console.print(f"saved as run {run['id']} of {model['name']}")
        return run

    def history(self, name: str) -> None:
        runs = self.client.benchmarks(name)
        if self.as_json:
            self.console.print_json(data=runs)
        elif not runs:
            self.console.print(f"No benchmark runs of {name} yet: corral bench {name}")
        else:
            self.console.print(history_table(runs))

    def compare(self, name: str, versions: tuple[str, str], plan: BenchPlan) -> None:
        """The latest runs of two versions (``name:V``), side by side; a version with
        no run yet is measured now with ``plan``."""
        if ":" in name:
            raise BenchError("--compare takes the bare name and two versions: iris --compare 1 2")
        # Both looked up first: a missing version is an error before any measuring.
        models = [self.client.show(f"{name}:{version}") for version in versions]
        runs = []
        for model in models:
            history = self.client.benchmarks(model["name"])
            runs.append(history[0] if history else self._run(model, plan))
        if self.as_json:
            self.console.print_json(data=runs)
        else:
            self.console.print(comparison_table(runs[0], runs[1]))

    def _run(self, model: dict[str, Any], plan: BenchPlan) -> dict[str, Any]:
        if not self.client.where.startswith("http"):
            raise BenchError(
                "corral bench measures through the server, and none answers at "
                f"{self.settings.base_url}: start it (corral serve) and run this again."
            )
        bench = Bench(self.client.where, auth_headers(), self.console)
        results = bench.run(model, plan)
        run: dict[str, Any] = {
            "machine": machine_facts(self.client.where),
            "settings": plan.to_dict(),
            "results": results,
        }
        if self.save and results:
            return self.client.save_benchmark(model["name"], run)
        return {"model": model["name"], **run}
