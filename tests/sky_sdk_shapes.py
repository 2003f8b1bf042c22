"""STAND-IN shapes of the few SkyPilot SDK data types the backend builds (`sky.Task`,
`sky.Resources`, `sky.StatusRefreshMode`), shared by the fake SDK of the backend tests
(test_skypilot_backend_fake) and the scale simulation's stand-in (benchmarks/sky_standin)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class SdkRefresh(Enum):
    NONE = "NONE"
    AUTO = "AUTO"
    FORCE = "FORCE"


@dataclass
class SdkTask:
    name: str | None = None
    run: str | None = None
    workdir: str | None = None
    envs: dict[str, str] = field(default_factory=dict)
    resources: Any = None
    config: dict[str, Any] | None = None

    @classmethod
    def from_yaml_config(cls, cfg: dict[str, Any]) -> SdkTask:
        return cls(name=cfg.get("name"), run=cfg.get("run"), workdir=cfg.get("workdir"),
                   envs=dict(cfg.get("envs") or {}), config=cfg)

    def set_resources(self, r: Any) -> None:
        self.resources = r


@dataclass
class SdkResources:
    accelerators: dict[str, float] | None = None
    cpus: str | None = None
