"""Where the registry commands send their work: the running server, or the files.

While ``corral serve`` runs, ``list/show/rm/cp/import/pull`` go through its admin
routes: a removal must stop the model's worker, and a pull is the server's job so it
survives the terminal closing. With no server, the same operations run in this
process on the same registry. Both sides return the same JSON shapes, so the commands
render one way.
"""

from __future__ import annotations

import builtins
from pathlib import Path
from typing import Any, Protocol

import httpx

from corral.settings import Settings


class RegistryError(Exception):
    """An operation failed; the message is the server's or the registry's."""


class RegistryClient(Protocol):
    where: str

    def list(self) -> builtins.list[dict[str, Any]]: ...
    def show(self, name: str) -> dict[str, Any]: ...
    def remove(self, name: str) -> builtins.list[str]: ...
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
    return RemoteRegistry(settings.base_url)


class RemoteRegistry:
    def __init__(self, base_url: str) -> None:
        self.where = base_url
        self._http = httpx.Client(base_url=base_url, timeout=None)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = self._http.request(method, path, json=body)
        try:
            data = response.json()
        except ValueError:
            data = {}
        if response.status_code >= 400:
            error = data.get("error") if isinstance(data, dict) else None
            message = error.get("message") if isinstance(error, dict) else None
            raise RegistryError(message or f"{response.status_code}: {response.text[:200]}")
        return data

    def list(self) -> builtins.list[dict[str, Any]]:
        models: builtins.list[dict[str, Any]] = self._call("GET", "/admin/models")["models"]
        return models

    def show(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/admin/models/{name}")
        return result

    def remove(self, name: str) -> builtins.list[str]:
        removed: list[str] = self._call("DELETE", f"/admin/models/{name}")["removed"]
        return removed

    def copy(self, source: str, destination: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call(
            "POST", f"/admin/models/{source}/copy", {"destination": destination}
        )
        return result

    def import_path(self, path: Path, name: str | None) -> dict[str, Any]:
        result: dict[str, Any] = self._call(
            "POST", "/admin/models/import", {"path": str(path.resolve()), "name": name}
        )
        return result

    def pull(self, ref: str, **options: Any) -> dict[str, Any]:
        body = {"model": ref, **{k: v for k, v in options.items() if v is not None}}
        result: dict[str, Any] = self._call("POST", "/admin/pulls", body)
        return result

    def pull_status(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/admin/pulls/{job_id}")
        return result

    def cancel_pull(self, job_id: str) -> dict[str, Any]:
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

    def remove(self, name: str) -> builtins.list[str]:
        removed: list[str] = self._do(self.registry.remove, name)
        return removed

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
