"""Build generated C into a shared library, through an on-disk cache.

The cache key is a hash of the full source (which embeds the IR-derived code
and the vector width), the compiler's identity and the flags, so an entry can
never be stale. Entries are written to a temporary name and renamed into place
under an exclusive lock: a second process compiling the same model waits and
reuses the library, a crash never leaves a half-written one, and an entry whose
recorded checksum does not match its bytes is rebuilt.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from llmc.errors import BuildError

DEFAULT_FLAGS = ("-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-std=gnu11")
LIBRARY, SOURCE, META = "kernels.so", "kernels.c", "meta.json"


@dataclass(frozen=True)
class BuildOptions:
    """How to build: compiler, flags and cache directory (read from the environment once, at the edge)."""

    compiler: str = "cc"
    flags: tuple[str, ...] = DEFAULT_FLAGS
    cache_dir: Path = Path.home() / ".cache" / "llmc"

    @classmethod
    def from_environment(cls, compiler: str | None = None, flags: str | None = None) -> BuildOptions:
        env = os.environ
        chosen_flags = flags if flags is not None else env.get("LLMC_CFLAGS")
        cache = env.get("LLMC_CACHE_DIR") or (Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llmc")
        return cls(
            compiler=compiler or env.get("CC") or "cc",
            flags=tuple(chosen_flags.split()) if chosen_flags else DEFAULT_FLAGS,
            cache_dir=Path(cache),
        )


@dataclass(frozen=True)
class BuildResult:
    library: Path
    cached: bool
    seconds: float
    key: str


def find_compiler(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BuildError(
            f"no C compiler found: '{name}' is not on PATH. Install gcc or clang, or name one with "
            "CC=... (or --cc) for the C backend."
        )
    return path


@lru_cache(maxsize=8)
def compiler_identity(path: str) -> str:
    try:
        done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise BuildError(f"the C compiler {path} does not run: {error}") from None
    first = (done.stdout or done.stderr).splitlines()
    return f"{path} {first[0] if first else ''}"


@lru_cache(maxsize=1)
def host_identity() -> str:
    """The CPU a -march=native build is tied to: its model and feature flags."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        info = ""
    wanted = [line for line in info.splitlines() if line.startswith(("model name", "flags", "Features"))]
    return platform.machine() + "|" + "|".join(sorted(set(wanted)))


def cache_key(source: str, identity: str, flags: tuple[str, ...]) -> str:
    digest = hashlib.sha256()
    for part in (source, identity, " ".join(flags), host_identity()):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def entry_is_valid(entry: Path) -> bool:
    try:
        meta = json.loads((entry / META).read_text())
        return file_digest(entry / LIBRARY) == meta["library_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


def build_library(source: str, options: BuildOptions, force: bool = False) -> BuildResult:
    """The shared library for `source`, from the cache or freshly compiled."""
    begin = time.perf_counter()
    compiler = find_compiler(options.compiler)
    key = cache_key(source, compiler_identity(compiler), options.flags)
    entry = options.cache_dir / key[:2] / key
    if not force and entry_is_valid(entry):
        return BuildResult(entry / LIBRARY, True, time.perf_counter() - begin, key)
    try:
        entry.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise BuildError(f"cannot create the build cache {entry}: {error.strerror}") from None
    with open(entry / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not force and entry_is_valid(entry):
            return BuildResult(entry / LIBRARY, True, time.perf_counter() - begin, key)
        compile_into(entry, source, compiler, options.flags)
    return BuildResult(entry / LIBRARY, False, time.perf_counter() - begin, key)


def compile_into(entry: Path, source: str, compiler: str, flags: tuple[str, ...]) -> None:
    atomic_write(entry / SOURCE, source.encode())
    fd, partial = tempfile.mkstemp(dir=entry, prefix=".kernels-", suffix=".so")
    os.close(fd)
    command = [compiler, *flags, "-fPIC", "-shared", "-o", partial, str(entry / SOURCE), "-lm"]
    try:
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines()
            shown = "\n".join(lines[:30]) + (f"\n... ({len(lines) - 30} more lines)" if len(lines) > 30 else "")
            raise BuildError(
                f"the C compiler failed on the generated code (kept at {entry / SOURCE}):\n"
                f"$ {' '.join(command)}\n{shown}"
            )
        meta = {"library_sha256": file_digest(Path(partial)), "compiler": compiler, "flags": list(flags)}
        os.replace(partial, entry / LIBRARY)
        atomic_write(entry / META, json.dumps(meta, indent=1).encode())
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


def atomic_write(path: Path, data: bytes) -> None:
    fd, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(partial, path)
    except BaseException:
        if os.path.exists(partial):
            os.unlink(partial)
        raise
