"""Load a run config: YAML file + ``--set key.path=value`` overrides -> RunConfig.

Shorthands accepted in YAML (normalised here so the dataclasses stay simple):

* a tier with one device: ``dram: {profile: ddr5_4800_8ch, capacity_gb: 512, path: [pcie]}``;
* ``count: N`` replicates that device N times;
* keys other than ``profile``/``path``/``count``/``devices`` on a device, link or compute
  entry override the profile's values (``capacity_gb``, ``read_bw_gbytes_per_s``, ...);
* ``system.compute: h100_sxm`` (a bare profile name).

``extends: base.yaml`` at the top of a file starts from another config (deep-merged).
Every error names the file (or ``--set``) and the dotted key.
"""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from ..resources import bundled_dir, default_config_path
from . import yamlload
from .schema import POLICY_AXES, RunConfig
from .strict import build


@dataclass(frozen=True)
class LoadedConfig:
    config: RunConfig
    raw: dict[str, Any]          # resolved mapping (after overrides and normalisation)
    source: str                  # file name (and "+ --set" if overridden)
    base_dir: Path               # relative paths in the config resolve against this

    @property
    def config_hash(self) -> str:
        return config_hash(self.raw)

    def resolve_path(self, p: str) -> Path:
        if p.startswith("bundled:"):
            name = p.split(":", 1)[1]
            return bundled_dir("traces") / (name if name.endswith(".parquet") else f"{name}.parquet")
        path = Path(p).expanduser()
        return path if path.is_absolute() else (self.base_dir / path)


def config_hash(raw: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest()[:12]


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        with open(path) as fh:
            data = yamlload.load(fh)
    except FileNotFoundError:
        raise ConfigError("file not found", source=str(path)) from None
    except IsADirectoryError:
        raise ConfigError("is a directory, not a YAML file", source=str(path)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", source=str(path)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not a text file: {exc.reason} at byte {exc.start}",
                          source=str(path)) from None
    except yaml.YAMLError as exc:
        raise ConfigError(yamlload.error_text(exc), source=str(path)) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("a run config must be a mapping of sections", source=str(path))
    return data


def parse_set(item: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], parsed value); the value is parsed as YAML (1.2
    floats: ``1.2e1`` is a number); a value that is not valid YAML stays a string."""
    if "=" not in item:
        raise ConfigError(f"expected KEY=VALUE, got {item!r}", source="--set")
    key, value = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"bad key {key!r}", source="--set")
    try:
        parsed = yamlload.load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return key.split("."), parsed


def apply_set(raw: dict[str, Any], parts: list[str], value: Any) -> None:
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        nxt = node[int(part)] if isinstance(node, list) and part.isdigit() else (
            node.get(part) if isinstance(node, dict) else None)
        if isinstance(nxt, str) and isinstance(node, dict):
            # a profile shorthand (``compute: h100_sxm``) being descended into
            nxt = node[part] = {"profile": nxt}
        if nxt is None:
            if not isinstance(node, dict):
                raise ConfigError(f"cannot set {'.'.join(parts)}: '{'.'.join(parts[:i])}' is "
                                  "not a mapping", source="--set", key=".".join(parts))
            nxt = node[part] = {}
        node = nxt
    last = parts[-1]
    if isinstance(node, list) and last.isdigit():
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError("parent is not a mapping", source="--set", key=".".join(parts))


_DEVICE_STRUCT = {"profile", "path"}


def _device_entry(d: Any, key: str, source: str) -> dict[str, Any]:
    if isinstance(d, str):
        d = {"profile": d}
    if not isinstance(d, dict):
        raise ConfigError(f"must be a mapping, got {d!r}", source=source, key=key)
    out = {k: v for k, v in d.items() if k in _DEVICE_STRUCT}
    ov = dict(d.get("overrides") or {})
    ov.update({k: v for k, v in d.items() if k not in _DEVICE_STRUCT and k != "overrides"})
    if "path" in out and isinstance(out["path"], str):
        out["path"] = [out["path"]]
    out["overrides"] = ov
    return out


def normalise(raw: dict[str, Any], source: str) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    system = raw.get("system")
    if isinstance(system, dict):
        comp = system.get("compute")
        if isinstance(comp, (str, dict)):
            system["compute"] = _device_entry(comp, "system.compute", source)
            system["compute"].pop("path", None)
        links = system.get("links")
        if isinstance(links, dict):
            system["links"] = {n: _device_entry(l, f"system.links.{n}", source)
                               for n, l in links.items()}
            for l in system["links"].values():
                l.pop("path", None)
        tiers = system.get("tiers")
        if isinstance(tiers, dict):
            out = {}
            for name, t in tiers.items():
                key = f"system.tiers.{name}"
                if isinstance(t, str):
                    t = {"profile": t}
                if not isinstance(t, dict):
                    raise ConfigError(f"must be a mapping, got {t!r}", source=source, key=key)
                if "devices" in t:
                    extra = set(t) - {"devices"}
                    if extra:
                        raise ConfigError(f"with 'devices', put {', '.join(sorted(extra))} on "
                                          "each device", source=source, key=key)
                    devs = t["devices"]
                    if not isinstance(devs, list):
                        raise ConfigError("must be a list of devices", source=source,
                                          key=f"{key}.devices")
                    out[name] = {"devices": [_device_entry(d, f"{key}.devices[{i}]", source)
                                             for i, d in enumerate(devs)]}
                else:
                    t = dict(t)
                    count = t.pop("count", 1)
                    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                        raise ConfigError(f"must be an integer >= 1, got {count!r}", source=source,
                                          key=f"{key}.count")
                    dev = _device_entry(t, key, source)
                    out[name] = {"devices": [copy.deepcopy(dev) for _ in range(count)]}
            system["tiers"] = out
    return raw


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``: mappings merge key by key, anything else replaces. A
    mapping that names a different policy (``name``) replaces the base's entirely, so its
    parameters are not mixed with the other policy's."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        b = out.get(k)
        if isinstance(v, dict) and isinstance(b, dict) and "name" in v and v["name"] != b.get("name"):
            out[k] = copy.deepcopy(v)
        elif isinstance(v, dict) and isinstance(b, dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def read_config_yaml(path: Path, _seen: tuple = ()) -> dict[str, Any]:
    """Read a run config, resolving ``extends: other.yaml`` (relative to the file; the
    extending file's keys win, mappings merge recursively)."""
    path = Path(path)
    if path.resolve() in _seen:
        chain = " -> ".join(str(p) for p in _seen + (path.resolve(),))
        raise ConfigError(f"'extends' forms a cycle: {chain}", source=str(path), key="extends")
    raw = read_yaml(path)
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str):
        raise ConfigError(f"must be a file name, got {parent!r}", source=str(path), key="extends")
    ppath = Path(parent)
    if not ppath.is_absolute():
        ppath = path.parent / ppath
    if not ppath.exists():
        raise ConfigError(f"extends '{parent}', which does not exist", source=str(path), key="extends")
    return deep_merge(read_config_yaml(ppath, _seen + (path.resolve(),)), raw)


def load_config(path: str | Path | None = None, sets: list[str] | None = None) -> LoadedConfig:
    """Load ``path`` (default: the bundled default config), apply ``--set`` items, validate."""
    cfg_path = Path(path) if path is not None else default_config_path()
    source = str(cfg_path)
    raw = read_config_yaml(cfg_path)
    # Validate the file alone first so errors in it are attributed to it, not to --set.
    loaded = _build(normalise(raw, source), source, cfg_path.parent)
    if sets:
        for item in sets:
            parts, value = parse_set(item)
            apply_set(raw, parts, value)
        loaded = _build(normalise(raw, f"{source} + --set"), f"{source} + --set", cfg_path.parent)
    return loaded


def load_mapping(raw: dict[str, Any], *, source: str = "<mapping>",
                 base_dir: str | Path = ".") -> LoadedConfig:
    """Build a config from an in-memory mapping (tests, sweeps)."""
    return _build(normalise(raw, source), source, Path(base_dir))


def _build(raw: dict[str, Any], source: str, base_dir: Path) -> LoadedConfig:
    cfg = build(RunConfig, raw, source=source)
    # Check each policy section against its policy's parameters now, not mid-run.
    from ..policies.base import policy_class
    for axis in POLICY_AXES:
        section = getattr(cfg, axis)
        cls = policy_class(axis, section, source=source)
        cls.parse_params(section, key=axis, source=source)
    return LoadedConfig(cfg, raw, source, base_dir)
