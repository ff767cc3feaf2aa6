"""A real rootless podman user for tests (needs root to set it up).

`ensure_user()` creates the user `zconvrl` (idempotent) with subordinate uid
and gid ranges, `user_python()` a Python for it: the project's venv lives
under /root (mode 0700 here), so a venv is built from /usr/bin/python3 under
/var/tmp with the project's dependencies and its C extension, cached there
keyed on pyproject.toml, setup.py and the extension's source. The code the
user runs is this tree's `converter/`, copied per run next to the cached
extension (so the cached venv never runs stale code).
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

USER = "zconvrl"
SYSTEM_PYTHON = "/usr/bin/python3"
CACHE = Path("/var/tmp/zconv-rootless-venv")
REPO = Path(__file__).resolve().parents[2]
SUBID_COUNT = 65536


def unavailable() -> str | None:
    """Why a rootless user cannot be set up here, or None."""
    if os.geteuid() != 0:
        return "creating the rootless test user needs root"
    for tool in ("useradd", "su", "podman", "newuidmap", "newgidmap"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian packages passwd, login, podman, uidmap; .ci/sysdeps)"
    if not os.path.exists(SYSTEM_PYTHON):
        return f"{SYSTEM_PYTHON} is missing (the rootless user cannot run the project's venv under /root)"
    return None


def _ensure_subids(path: str, name: str) -> None:
    lines = Path(path).read_text().splitlines() if os.path.exists(path) else []
    if any(line.split(":", 1)[0] == name for line in lines):
        return  # useradd on Debian allocates a range itself
    end = 100000
    for line in lines:
        parts = line.split(":")
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            end = max(end, int(parts[1]) + int(parts[2]))
    with open(path, "a") as f:
        f.write(f"{name}:{end}:{SUBID_COUNT}\n")


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    home: Path
    runtime_dir: Path
    subuid_start: int

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            "HOME": str(self.home),
            "USER": self.name,
            "LOGNAME": self.name,
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "XDG_RUNTIME_DIR": str(self.runtime_dir),
            "LANG": "C.UTF-8",
        }
        env.update(extra)
        return env

    def run(
        self, argv: list[str], env: dict[str, str] | None = None, timeout: float = 300, cwd: str = "/"
    ) -> subprocess.CompletedProcess:
        """argv as the user, with exactly `env` (default: self.env()); no shell in between."""
        cmd = ["setpriv", f"--reuid={self.uid}", f"--regid={self.uid}", "--init-groups", "--reset-env", "--"]
        cmd += ["env", "-i", *[f"{k}={v}" for k, v in (env or self.env()).items()], *argv]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd)

    def podman(self, *args: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        p = self.run(["podman", "--events-backend=none", *args], env=env)
        if check and p.returncode != 0:
            raise RuntimeError(f"podman {' '.join(args)} as {self.name} failed ({p.returncode}):\n{p.stderr[-3000:]}")
        return p


def ensure_user(name: str = USER) -> User:
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", name], check=True, capture_output=True)
        pw = pwd.getpwnam(name)
    _ensure_subids("/etc/subuid", name)
    _ensure_subids("/etc/subgid", name)
    start = next(
        int(line.split(":")[1])
        for line in Path("/etc/subuid").read_text().splitlines()
        if line.split(":", 1)[0] == name
    )
    runtime = Path(f"/tmp/{name}-run")
    runtime.mkdir(mode=0o700, exist_ok=True)
    os.chown(runtime, pw.pw_uid, pw.pw_gid)
    os.chmod(runtime, 0o700)
    return User(name, pw.pw_uid, Path(pw.pw_dir), runtime, start)


def _venv_key() -> str:
    h = hashlib.sha256()
    for rel in ("pyproject.toml", "setup.py", "converter/chunked/_rollsum.c"):
        h.update(rel.encode() + b"\0" + (REPO / rel).read_bytes())
    h.update(Path(SYSTEM_PYTHON).resolve().name.encode())
    return h.hexdigest()[:16]


def user_venv() -> Path:
    """A venv the user can run, with the project's dependencies and its compiled extension."""
    venv = CACHE / _venv_key()
    if (venv / ".ready").exists():
        return venv
    CACHE.mkdir(parents=True, exist_ok=True)
    os.chmod(CACHE, 0o755)
    build = Path(tempfile.mkdtemp(prefix="build-", dir=CACHE))
    try:
        src = build / "src"
        src.mkdir()
        for rel in ("pyproject.toml", "setup.py", "README.md"):
            shutil.copy2(REPO / rel, src / rel)
        shutil.copytree(REPO / "converter", src / "converter", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
        tmp_venv = build / "venv"
        subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(tmp_venv)], check=True, capture_output=True)
        p = subprocess.run(
            [str(tmp_venv / "bin" / "python"), "-m", "pip", "install", "-q", str(src)],
            capture_output=True,
            text=True,
            timeout=900,
        )
        if p.returncode != 0:
            raise RuntimeError(f"pip install of the project into {tmp_venv} failed:\n{p.stderr[-3000:]}")
        # only `python -m` is used, which works in a moved venv (its scripts' #! lines would not)
        (tmp_venv / ".ready").write_text("")
        if venv.exists():
            shutil.rmtree(venv)
        os.rename(tmp_venv, venv)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    subprocess.run(["chmod", "-R", "a+rX", str(venv)], check=True)
    return venv


def user_code(venv: Path, into: Path) -> Path:
    """This tree's converter/ in `into` (readable by everyone) with the venv's compiled extension."""
    dest = into / "converter"
    shutil.copytree(REPO / "converter", dest, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    site = next((venv / "lib").glob("python3*/site-packages"))
    for so in (site / "converter" / "chunked").glob("_rollsum*.so"):
        shutil.copy2(so, dest / "chunked" / so.name)
    subprocess.run(["chmod", "-R", "a+rX", str(into)], check=True)
    return into


def python_argv(venv: Path) -> list[str]:
    return [str(venv / "bin" / "python")]


if __name__ == "__main__":  # pragma: no cover - manual use: python tests/support/rootless.py
    print(ensure_user(), user_venv(), file=sys.stderr)
