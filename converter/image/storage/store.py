"""Where a containers/storage store is, the way containers/storage decides it.

A reference may name the store itself (skopeo's store specifier):

    containers-storage:[DRIVER@GRAPHROOT+RUNROOT:OPTIONS]IMAGE

Every part of the specifier is optional except the graph root. Without one,
the store comes from the configuration, in containers/storage's order:

1. `$CONTAINERS_STORAGE_CONF`, when set (the only file read then);
2. for a non-root user, `$XDG_CONFIG_HOME/containers/storage.conf`
   (`~/.config/...`) when it exists, read over the defaults the user gets
   from the system file (below);
3. `/etc/containers/storage.conf`, else `/usr/share/containers/storage.conf`.

A non-root user (also inside `podman unshare`, which podman marks with
`$_CONTAINERS_ROOTLESS_UID`) gets from a system file the per-user store
(`rootless_storage_path`, else `$XDG_DATA_HOME/containers/storage`) and the
system's driver when rootless podman can use it, as podman does. `$STORAGE_DRIVER` overrides the driver. With no driver
configured, the first driver directory found in the graph root wins
(overlay before vfs), and overlay when there is none.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass

from converter.errors import BadInputError, UsageError

SYSTEM_CONF = "/etc/containers/storage.conf"
DEFAULT_CONF = "/usr/share/containers/storage.conf"
ROOT_GRAPHROOT = "/var/lib/containers/storage"
ROOT_RUNROOT = "/run/containers/storage"
SUPPORTED_DRIVERS = ("overlay", "vfs")
# containers/storage's driver priority, for picking the one a graph root already uses.
_DRIVER_PRIORITY = ("overlay", "btrfs", "zfs", "vfs")
# Drivers a rootless user takes over from the system file (containers/storage's isRootlessDriver).
_ROOTLESS_DRIVERS = ("overlay", "overlay2", "vfs", "btrfs")


@dataclass(frozen=True)
class StoreSpec:
    """A store as named by a reference's [..] specifier (None: from the configuration)."""

    driver: str | None = None
    graphroot: str | None = None
    runroot: str | None = None
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class Store:
    driver: str
    graphroot: str
    runroot: str
    config_file: str | None  # where the settings came from, for messages

    def __str__(self) -> str:
        return f"[{self.driver}@{self.graphroot}+{self.runroot}]"

    @property
    def layers_dir(self) -> str:
        return os.path.join(self.graphroot, f"{self.driver}-layers")

    @property
    def images_dir(self) -> str:
        return os.path.join(self.graphroot, f"{self.driver}-images")


def parse_reference(rest: str, raw: str) -> tuple[StoreSpec | None, str]:
    """Split what follows `containers-storage:` into (store specifier, image)."""
    spec = None
    image = rest
    if rest.startswith("["):
        close = rest.find("]")
        if close < 0:
            raise UsageError(f"{raw!r}: store specifier '[' without a closing ']'")
        inner, image = rest[1:close], rest[close + 1 :]
        driver = None
        if "@" in inner:
            driver, _, inner = inner.partition("@")
            if not driver:
                raise UsageError(f"{raw!r}: empty driver name before '@' in the store specifier")
        options: tuple[str, ...] = ()
        # GRAPHROOT+RUNROOT:OPTIONS; the roots are absolute paths.
        if ":" in inner:
            inner, _, opts = inner.partition(":")
            options = tuple(o for o in opts.split(",") if o)
        graphroot, _, runroot = inner.partition("+")
        if not graphroot or not os.path.isabs(graphroot):
            raise UsageError(f"{raw!r}: the store specifier needs an absolute graph root, [DRIVER@GRAPHROOT+RUNROOT]")
        if runroot and not os.path.isabs(runroot):
            raise UsageError(f"{raw!r}: the run root in the store specifier must be an absolute path")
        spec = StoreSpec(driver, os.path.normpath(graphroot), os.path.normpath(runroot) if runroot else None, options)
    if not image:
        raise UsageError(f"{raw!r}: missing image name or ID after 'containers-storage:'")
    return spec, image


def _rootless_uid() -> int:
    """The user whose store this is: inside `podman unshare` the euid is 0, and
    podman says who we really are in $_CONTAINERS_ROOTLESS_UID (as containers/storage reads it)."""
    env = os.environ.get("_CONTAINERS_ROOTLESS_UID")
    if env:
        try:
            return int(env)
        except ValueError:
            pass
    return os.geteuid()


def _is_root() -> bool:
    return _rootless_uid() == 0


def _user_config_file() -> str:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "containers", "storage.conf")


def _rootless_graphroot() -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "containers", "storage")


def _rootless_runroot() -> str:
    rt = os.environ.get("XDG_RUNTIME_DIR")
    if not rt:
        rt = f"/run/user/{_rootless_uid()}"
        if not os.path.isdir(rt):
            rt = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"storage-run-{_rootless_uid()}")
    return os.path.join(rt, "containers")


def _load_conf(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise BadInputError(f"{path}: cannot read the storage configuration ({e})") from None
    storage = doc.get("storage")
    return storage if isinstance(storage, dict) else {}


def _rootless_defaults(system: dict | None = None) -> tuple[str, str]:
    """A non-root user's graph root and driver from the system file: `rootless_storage_path`
    (else the per-user store) and its driver when rootless podman can use it (else none)."""
    if system is None:
        path = SYSTEM_CONF if os.path.exists(SYSTEM_CONF) else DEFAULT_CONF
        system = _load_conf(path) if os.path.exists(path) else {}
    rsp = system.get("rootless_storage_path")
    driver = str(system.get("driver") or "")
    return (_expand(str(rsp)) if rsp else _rootless_graphroot(), driver if driver in _ROOTLESS_DRIVERS else "")


def _expand(path: str) -> str:
    return os.path.expandvars(path.replace("$UID", str(_rootless_uid())))


def _detect_driver(graphroot: str) -> str:
    for name in _DRIVER_PRIORITY:
        if os.path.isdir(os.path.join(graphroot, f"{name}-layers")):
            return name
    return "overlay"


def find_store(spec: StoreSpec | None = None) -> Store:
    """The store a reference names, filling what it leaves out from the configuration."""
    conf_file: str | None
    user_file = False
    env_conf = os.environ.get("CONTAINERS_STORAGE_CONF")
    if env_conf:
        conf_file, user_file = env_conf, True
        if not os.path.exists(env_conf):
            raise BadInputError(f"CONTAINERS_STORAGE_CONF names {env_conf}, which does not exist")
    elif not _is_root() and os.path.exists(_user_config_file()):
        conf_file, user_file = _user_config_file(), True
    elif os.path.exists(SYSTEM_CONF):
        conf_file = SYSTEM_CONF
    elif os.path.exists(DEFAULT_CONF):
        conf_file = DEFAULT_CONF
    else:
        conf_file = None
    conf = _load_conf(conf_file) if conf_file else {}

    if _is_root() or user_file:
        if _is_root() or env_conf:
            base_graphroot = ROOT_GRAPHROOT if _is_root() else _rootless_graphroot()
            base_driver = ""
        else:
            # A user's ~/.config file is read over the rootless defaults taken from the system file
            # (its rootless_storage_path and driver), as containers/storage does.
            base_graphroot, base_driver = _rootless_defaults()
        graphroot = _expand(str(conf.get("graphroot") or "")) or base_graphroot
        runroot = _expand(str(conf.get("runroot") or "")) or (ROOT_RUNROOT if _is_root() else _rootless_runroot())
        driver = str(conf.get("driver") or "") or base_driver
    else:
        graphroot, driver = _rootless_defaults(conf)
        runroot = _rootless_runroot()
    if os.environ.get("STORAGE_DRIVER"):
        driver = os.environ["STORAGE_DRIVER"]

    if spec is not None:
        if spec.graphroot:
            graphroot = spec.graphroot
        if spec.runroot:
            runroot = spec.runroot
        if spec.driver:
            driver = spec.driver
    if driver == "overlay2":
        driver = "overlay"
    if not driver:
        driver = _detect_driver(graphroot)
    if driver not in SUPPORTED_DRIVERS:
        raise BadInputError(
            f"containers-storage [{driver}@{graphroot}]: the {driver!r} storage driver is not supported "
            f"(supported: {', '.join(SUPPORTED_DRIVERS)})"
        )
    return Store(driver, graphroot, runroot, conf_file)
