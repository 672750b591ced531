"""Where the registry commands send their work: the running server, or the files.

While ``corral serve`` runs, ``list/show/rm/cp/import/pull`` go through its admin
routes: a removal must stop the model's worker, and a pull is the server's job so it
survives the terminal closing. With no server, the same operations run in this
process on the same registry. Both sides return the same JSON shapes, so the commands
render one way.

The server reads no local path for its API's callers outside ``CORRAL_IMPORT_DIRS``
(issue 16), but the user of this CLI owns the server's home: when the server refuses
``corral import PATH`` or ``corral pull ./path`` for that reason, the CLI does it
itself, in the same home, as without a server, and says so. The registry is one
database, so the server lists the model at once.
"""

from __future__ import annotations

import builtins
import sys
from pathlib import Path
from typing import Any, Protocol

import httpx

from corral.cli.client_auth import auth_headers
from corral.settings import Settings


class RegistryError(Exception):
    """An operation failed; the message is the server's or the registry's, ``code``
    the server's error code if it gave one."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


LOCAL_PATH_REFUSED = "local_path_refused"  # corral.errors.LocalPathRefused.code


class RegistryClient(Protocol):
    where: str

    def list(self) -> builtins.list[dict[str, Any]]: ...
    def show(self, name: str) -> dict[str, Any]: ...
    def inspect(self, name: str) -> dict[str, Any]: ...
    def schema(self, name: str) -> dict[str, Any]: ...
    def remove(self, name: str) -> builtins.list[str]: ...
    def set_default(self, name: str) -> dict[str, Any]: ...
    def benchmarks(self, name: str) -> builtins.list[dict[str, Any]]: ...
    def save_benchmark(self, name: str, run: dict[str, Any]) -> dict[str, Any]: ...
    def clear_default(self, name: str) -> dict[str, Any]: ...
    def copy(self, source: str, destination: str) -> dict[str, Any]: ...
    def import_path(self, path: Path, name: str | None) -> dict[str, Any]: ...
    def pull(self, ref: str, **options: Any) -> dict[str, Any]: ...
    def pull_status(self, job_id: str) -> dict[str, Any]: ...
    def cancel_pull(self, job_id: str) -> dict[str, Any]: ...
    def configure(
        self, name: str, params: dict[str, Any], aliases: builtins.list[str]
    ) -> dict[str, Any]: ...
    def close(self) -> None: ...


def connect(settings: Settings) -> RegistryClient:
    """The server's admin API if one answers at the configured address, else local."""
    try:
        httpx.get(settings.base_url + "/health", timeout=1.0)
    except httpx.TransportError:
        return LocalRegistry(settings)
    return RemoteRegistry(settings.base_url, settings)


class RemoteRegistry:
    def __init__(self, base_url: str, settings: Settings | None = None) -> None:
        self.where = base_url
        self._http = httpx.Client(base_url=base_url, timeout=None, headers=auth_headers())
        self._settings = settings  # for local paths the server refuses; None: no fallback
        self._local: LocalRegistry | None = None
        self._local_jobs: set[str] = set()  # pulls this process runs itself

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = self._http.request(method, path, json=body)
        try:
            data = response.json()
        except ValueError:
            data = {}
        if response.status_code >= 400:
            error = data.get("error") if isinstance(data, dict) else None
            message = error.get("message") if isinstance(error, dict) else None
            code = error.get("code") if isinstance(error, dict) else None
            raise RegistryError(
                message or f"{response.status_code}: {response.text[:200]}",
                code if isinstance(code, str) else None,
            )
        return data

    def _here(self, refused: RegistryError, what: str) -> LocalRegistry:
        """The registry to use in this process when the server refused a local path,
        after checking that it is the server's (the same models); else ``refused``."""
        if refused.code != LOCAL_PATH_REFUSED or self._settings is None:
            raise refused
        if self._local is None:
            local = LocalRegistry(self._settings)
            server_models = {m["name"] for m in self.list()}
            if {m["name"] for m in local.list()} != server_models:
                local.close()
                raise RegistryError(
                    f"{refused} The CLI could do it itself in its own home, but "
                    f"{local.where} is not the server's (CORRAL_HOME differs)."
                )
            self._local = local
        print(
            "The server reads no local files for API callers outside CORRAL_IMPORT_DIRS: "
            f"{what} directly into the shared home {self._local.where}.",
            file=sys.stderr,
        )
        return self._local

    def list(self) -> builtins.list[dict[str, Any]]:
        models: builtins.list[dict[str, Any]] = self._call("GET", "/admin/models")["models"]
        return models

    def show(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/admin/models/{name}")
        return result

    def inspect(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/admin/models/{name}/inspect")
        return result

    def schema(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/admin/models/{name}/schema")
        return result

    def remove(self, name: str) -> builtins.list[str]:
        removed: list[str] = self._call("DELETE", f"/admin/models/{name}")["removed"]
        return removed

    def set_default(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("PUT", f"/admin/models/{name}/default")
        return result

    def benchmarks(self, name: str) -> builtins.list[dict[str, Any]]:
        runs: list[dict[str, Any]] = self._call("GET", f"/admin/models/{name}/benchmarks")[
            "benchmarks"
        ]
        return runs

    def save_benchmark(self, name: str, run: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", f"/admin/models/{name}/benchmarks", run)
        return result

    def clear_default(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("DELETE", f"/admin/models/{name}/default")
        return result

    def copy(self, source: str, destination: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call(
            "POST", f"/admin/models/{source}/copy", {"destination": destination}
        )
        return result

    def import_path(self, path: Path, name: str | None) -> dict[str, Any]:
        try:
            result: dict[str, Any] = self._call(
                "POST", "/admin/models/import", {"path": str(path.resolve()), "name": name}
            )
        except RegistryError as exc:
            return self._here(exc, f"importing {path}").import_path(path, name)
        return result

    def pull(self, ref: str, **options: Any) -> dict[str, Any]:
        body = {"model": _absolute(ref), **{k: v for k, v in options.items() if v is not None}}
        try:
            result: dict[str, Any] = self._call("POST", "/admin/pulls", body)
        except RegistryError as exc:
            local = self._here(exc, f"pulling {ref}")
            result = local.pull(ref, **options)
            self._local_jobs.add(result["id"])
            self.where = local.where  # the pull runs in this process: no --detach
        return result

    def pull_status(self, job_id: str) -> dict[str, Any]:
        if self._local is not None and job_id in self._local_jobs:
            return self._local.pull_status(job_id)
        result: dict[str, Any] = self._call("GET", f"/admin/pulls/{job_id}")
        return result

    def cancel_pull(self, job_id: str) -> dict[str, Any]:
        if self._local is not None and job_id in self._local_jobs:
            return self._local.cancel_pull(job_id)
        result: dict[str, Any] = self._call("DELETE", f"/admin/pulls/{job_id}")
        return result

    def configure(
        self, name: str, params: dict[str, Any], aliases: builtins.list[str]
    ) -> dict[str, Any]:
        result: dict[str, Any] = self._call(
            "PATCH", f"/admin/models/{name}", {"params": params, "aliases": aliases}
        )
        return result

    def close(self) -> None:
        self._http.close()
        if self._local is not None:
            self._local.close()


class LocalRegistry:
    def __init__(self, settings: Settings) -> None:
        from corral.engines.catalog import load_catalog
        from corral.registry.pulls import Pulls
        from corral.registry.store import Registry

        self.where = str(settings.home)
        self.catalog = load_catalog(settings.engines)
        self.registry = Registry(settings.home, settings.database_url)
        self.pulls = Pulls(
            self.registry,
            downloads_dir=settings.home / "downloads",
            disk_reserve=settings.disk_reserve_bytes,
            max_parallel=settings.max_parallel_pulls,
            allow_private=settings.allow_private_pulls,
        )

    def _do(self, action: Any, *args: Any, **kwargs: Any) -> Any:
        from corral.errors import CorralError

        try:
            return action(*args, **kwargs)
        except CorralError as exc:
            raise RegistryError(exc.message) from None

    def list(self) -> builtins.list[dict[str, Any]]:
        return [self.catalog.describe(r) for r in self._do(self.registry.list)]

    def show(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.catalog.describe(self._do(self.registry.get, name))
        return result

    def inspect(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._do(self.catalog.inspect, self._do(self.registry.get, name))
        return result

    def schema(self, name: str) -> dict[str, Any]:
        raise RegistryError(
            "corral schema reads the model's tensors from its loaded worker: start the "
            "server (corral serve) and run it again."
        )

    def remove(self, name: str) -> builtins.list[str]:
        removed: list[str] = self._do(self.registry.remove, name)
        return removed

    def set_default(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.catalog.describe(self._do(self.registry.set_default, name))
        return result

    def benchmarks(self, name: str) -> builtins.list[dict[str, Any]]:
        from corral.registry.benchmarks import benchmark_history

        runs: list[dict[str, Any]] = self._do(benchmark_history, self.registry, name)
        if not runs:
            self._do(self.registry.get, name)  # unknown: an error, not an empty history
        return runs

    def save_benchmark(self, name: str, run: dict[str, Any]) -> dict[str, Any]:
        from corral.registry.benchmarks import save_benchmark

        record = self._do(self.registry.get, name)
        saved: dict[str, Any] = self._do(save_benchmark, self.registry, record, **run)
        return saved

    def clear_default(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.catalog.describe(self._do(self.registry.clear_default, name))
        return result

    def copy(self, source: str, destination: str) -> dict[str, Any]:
        result: dict[str, Any] = self.catalog.describe(
            self._do(self.registry.copy, source, destination)
        )
        return result

    def import_path(self, path: Path, name: str | None) -> dict[str, Any]:
        result: dict[str, Any] = self.catalog.describe(
            self._do(self.registry.import_path, path, name)
        )
        return result

    def pull(self, ref: str, **options: Any) -> dict[str, Any]:
        self._do(self.catalog.check_declared, options.get("params"))
        status, _ = self._do(self.pulls.submit, ref, **options)
        result: dict[str, Any] = status.to_dict()
        return result

    def pull_status(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._do(self.pulls.get, job_id).to_dict()
        return result

    def cancel_pull(self, job_id: str) -> dict[str, Any]:
        self._do(self.pulls.cancel, job_id)
        result: dict[str, Any] = self._do(self.pulls.wait, job_id, 30.0).to_dict()
        return result

    def configure(
        self, name: str, params: dict[str, Any], aliases: builtins.list[str]
    ) -> dict[str, Any]:
        self._do(self.catalog.check_configuration, self._do(self.registry.get, name), params)
        record = self._do(self.registry.configure, name, params=params, aliases=aliases)
        result: dict[str, Any] = self.catalog.describe(record)
        return result

    def close(self) -> None:
        self.pulls.close()
        self.registry.close()


def _absolute(ref: str) -> str:
    """A local path as this process means it (the server's working directory is
    another); any other reference as given."""
    from corral.errors import CorralError
    from corral.registry.refs import parse_reference

    try:
        reference = parse_reference(ref)
    except CorralError:
        return ref  # the server says what is wrong with it
    return str(reference.path) if reference.kind == "path" else ref
