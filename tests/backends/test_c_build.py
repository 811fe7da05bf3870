"""Building and caching generated C: missing compilers, compile errors, corrupt entries, races."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import assert_close, eager, small_example

import llmc
from llmc.backends.c.build import BuildOptions, build_library, entry_is_valid
from llmc.errors import BuildError

TINY = "int llmc_answer(void) { return 42; }\n"


def options(tmp_path, **overrides) -> BuildOptions:
    return BuildOptions(**{"cache_dir": tmp_path / "cache", "flags": ("-O1",), **overrides})


def test_a_second_build_comes_from_the_cache(tmp_path):
    first = build_library(TINY, options(tmp_path))
    second = build_library(TINY, options(tmp_path))
    assert not first.cached and second.cached and first.library == second.library


def test_missing_compiler_is_a_clear_error(tmp_path):
    with pytest.raises(BuildError, match="no C compiler found.*no-such-cc"):
        build_library(TINY, options(tmp_path, compiler="no-such-cc"))


def test_compile_error_names_the_kept_source_and_leaves_no_library(tmp_path):
    with pytest.raises(BuildError, match=r"(?s)C compiler failed.*kernels\.c.*error"):
        build_library("int broken = ;\n", options(tmp_path))
    entries = [p for p in (tmp_path / "cache").rglob("*") if p.is_dir() and len(p.name) == 64]
    assert entries and not any((e / "kernels.so").exists() for e in entries)
    assert not list((tmp_path / "cache").rglob(".kernels-*"))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "meta"])
def test_a_corrupt_entry_is_rebuilt(tmp_path, damage):
    built = build_library(TINY, options(tmp_path))
    entry = built.library.parent
    if damage == "truncate":
        built.library.write_bytes(built.library.read_bytes()[:100])
    elif damage == "garbage":
        built.library.write_bytes(b"\x7fELF not really")
    else:
        (entry / "meta.json").write_text("{not json")
    assert not entry_is_valid(entry)
    again = build_library(TINY, options(tmp_path))
    assert not again.cached and entry_is_valid(entry)


def test_a_corrupt_library_of_a_model_is_rebuilt_and_still_right(tmp_path):
    model, inputs = small_example("gpt2_block")
    build = options(tmp_path, flags=("-O2", "-fopenmp"))
    first = llmc.compile(model, inputs, target="c", build=build, emit=lambda _: None)
    library = first.program.build.library
    damaged = library.with_name("damaged")
    damaged.write_bytes(b"corrupt")
    damaged.replace(library)  # a new file: the copy this process has mapped stays intact
    second = llmc.compile(model, inputs, target="c", build=build, emit=lambda _: None)
    assert not second.program.build.cached
    assert_close([second(*inputs).numpy()], eager(model, inputs), tol=1e-4)


def test_two_processes_compiling_the_same_model_share_one_library(tmp_path):
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent.parent)!r})
        from llmc.backends.c.build import BuildOptions, build_library
        from pathlib import Path
        source = "double llmc_work(void) {{ double s = 0; for (int i = 0; i < 100; i++) s += i; return s; }}\\n"
        result = build_library(source, BuildOptions(cache_dir=Path({str(tmp_path / "cache")!r}), flags=("-O1",)))
        print(result.library, result.cached)
    """)
    runs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) for _ in range(4)]
    lines = [run.communicate(timeout=120)[0].split() for run in runs]
    assert all(run.returncode == 0 for run in runs)
    assert len({line[0] for line in lines}) == 1
    assert [line[1] for line in lines].count("False") == 1  # exactly one process compiled
    assert entry_is_valid(Path(lines[0][0]).parent)


def test_cli_reports_a_missing_compiler_without_a_traceback(tmp_path):
    examples = Path(__file__).resolve().parents[2] / "examples"
    done = subprocess.run(
        [sys.executable, "-m", "llmc", "compile", str(examples / "gpt2_block.py"), "--target", "c",
         "--cc", "no-such-cc", "--out-dir", str(tmp_path / "out")],
        capture_output=True, text=True,
    )
    assert done.returncode == 1
    assert "no C compiler found" in done.stderr and "Traceback" not in done.stderr


def test_cli_writes_sources_library_and_report(tmp_path):
    examples = Path(__file__).resolve().parents[2] / "examples"
    done = subprocess.run(
        [sys.executable, "-m", "llmc", "compile", str(examples / "gpt2_decode.py"), "--target", "c", "--run",
         "--out-dir", str(tmp_path / "out")],
        capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "OK" in done.stdout and " us" in done.stdout
    for name in ["kernels.c", "kernels.so", "report.txt", "final.mlir"]:
        assert (tmp_path / "out" / name).stat().st_size > 0
