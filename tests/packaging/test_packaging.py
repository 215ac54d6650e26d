"""Packaging (pyproject.toml): `pip install .` / `pip install git+<repo>` gives diffusers users the one module
`teacache_sample_video` and the `teacache-hunyuanvideo` command, and nothing else of the repository.

The repository's files (those git would clone) are copied to a temporary folder, so that the build's
build/ and *.egg-info/ never land in the checkout, and installed into a fresh venv that sees the running
interpreter's site-packages through a .pth file (torch, numpy, loguru, setuptools and pip come from there; nothing
is downloaded: --no-deps --no-build-isolation --no-index). That holds whether the tests run in a plain venv, a venv
with system site-packages or the system's Python. Everything installed is then run from a folder outside both the
copy and the repository.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT

DIST = "teacache-hunyuanvideo"
MODULE = "teacache_sample_video"
COMMAND = "teacache-hunyuanvideo"
NOT_PACKAGED = ("tinyhv", "tests", "benchmarks", "assets", "demo")
PIP_OFFLINE = ["--no-deps", "--no-build-isolation", "--no-index", "--no-cache-dir",
               "--disable-pip-version-check", "--no-input"]
COPY_IGNORE = shutil.ignore_patterns(".git", "__pycache__", "*.pyc", "build", "dist", "*.egg-info",
                                     ".pytest_cache", "results", "out", ".whl")


def _env():
    """No PYTHONPATH (which could point at the checkout), no user site: only the venv and the system."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env.update(PYTHONNOUSERSITE="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    return env


def _run(cmd, cwd, timeout=300):
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=timeout)


def _check_build_backend():
    """--no-build-isolation builds with the system's setuptools: it must read this pyproject.toml. Its version is
    read from its metadata, not by importing it (setuptools patches distutils in the importing process)."""
    from importlib import metadata

    try:
        found = metadata.version("setuptools")
    except metadata.PackageNotFoundError:
        pytest.skip("setuptools is not installed here: an offline (--no-build-isolation) build needs it")
    version = tuple(int(p) if p.isdigit() else 0 for p in found.split(".")[:2])
    if version < (77, 0):  # >= 70.1 also builds wheels without the `wheel` package
        pytest.skip(f"setuptools {found} here; pyproject.toml's SPDX license needs >= 77 "
                    "(pip's default build isolation fetches it, which this offline test does not)")


def _repo_files():
    """What `pip install git+<repo>` sees: the tracked files, plus new ones git does not ignore (pyproject.toml
    before it is committed); a plain copy of the tree when git cannot list them."""
    if shutil.which("git"):
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, text=True)
        if out.returncode == 0 and out.stdout:
            return [p for p in out.stdout.split("\0") if p and (ROOT / p).is_file()]
    return None


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    _check_build_backend()
    dest = tmp_path_factory.mktemp("pkg") / "src"
    files = _repo_files()
    if files is None:
        shutil.copytree(ROOT, dest, ignore=COPY_IGNORE)
    else:
        for rel in files:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    assert (dest / "pyproject.toml").is_file() and (dest / f"{MODULE}.py").is_file()
    return dest


def _venv_python(env_dir: Path) -> Path:
    return env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _running_site_dirs():
    """The running interpreter's import path entries that hold installed packages (its venv's site-packages, and
    the system's where that venv sees them): what the test venv is given, in the same order."""
    import site

    dirs = list(site.getsitepackages()) + [site.getusersitepackages()] * site.ENABLE_USER_SITE
    return [d for d in dict.fromkeys(dirs) if Path(d).is_dir()]


@pytest.fixture(scope="module")
def installed(source, tmp_path_factory):
    """A fresh venv, without pip of its own, that sees the running interpreter's packages through a .pth file
    (a venv's --system-site-packages would show the base interpreter's instead, which in a plain venv lacks the
    test stack), with the package installed into it from the copied checkout by that pip."""
    env_dir = tmp_path_factory.mktemp("venv") / "env"
    try:
        venv.EnvBuilder(system_site_packages=False, with_pip=False, symlinks=os.name != "nt").create(env_dir)
    except Exception as e:  # pragma: no cover - depends on the interpreter's build
        pytest.skip(f"cannot create a venv here: {e!r}")
    python = _venv_python(env_dir)
    outside = tmp_path_factory.mktemp("outside")
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], outside)
    Path(purelib.stdout.strip(), "_running_interpreter.pth").write_text("\n".join(_running_site_dirs()) + "\n")
    assert _run([python, "-m", "pip", "--version"], outside).returncode == 0, "pip not visible in the test venv"
    pip = _run([python, "-m", "pip", "install", *PIP_OFFLINE, source], outside)
    assert pip.returncode == 0, f"pip install of the checkout failed:\n{pip.stdout[-3000:]}\n{pip.stderr[-3000:]}"
    scripts = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['scripts'])"], outside)
    return dict(python=python, outside=outside, purelib=Path(purelib.stdout.strip()),
                scripts=Path(scripts.stdout.strip()), source=source)


def test_module_imports_from_the_venv_not_the_checkout(installed):
    code = ("import teacache_sample_video as m, sys; "
            "from teacache_sample_video import enable_teacache, diffusers_cli; "
            "assert callable(enable_teacache) and callable(diffusers_cli); print(m.__file__)")
    out = _run([installed["python"], "-c", code], installed["outside"])
    assert out.returncode == 0, out.stderr
    module_file = Path(out.stdout.strip().splitlines()[-1]).resolve()
    assert module_file.parent == installed["purelib"].resolve(), module_file
    for tree in (ROOT, installed["source"]):
        assert tree.resolve() not in module_file.parents, f"imported from {tree}, not the venv: {module_file}"


def test_console_command_runs_the_diffusers_cli(installed):
    command = installed["scripts"] / (COMMAND + (".exe" if os.name == "nt" else ""))
    assert command.is_file(), f"{COMMAND} not installed in {installed['scripts']}"
    out = _run([command, "--help"], installed["outside"])
    assert out.returncode == 0, out.stderr
    for flag in ("--diffusers-model", "--rel-l1-thresh", "--prompt", "--infer-steps"):
        assert flag in out.stdout, f"{flag} missing from `{COMMAND} --help`:\n{out.stdout}"
    # Without a model it is argparse's usage error (exit 2), not a traceback.
    bare = _run([command], installed["outside"])
    assert bare.returncode == 2 and "--diffusers-model" in bare.stderr and "Traceback" not in bare.stderr


def test_installed_files_are_the_one_module(installed):
    meta = _run([installed["python"], "-c",
                 "import importlib.metadata as md, json; d = md.distribution('%s'); "
                 "print(json.dumps(dict(files=[str(f) for f in d.files], requires=d.requires or [], "
                 "eps=[[e.group, e.name, e.value] for e in d.entry_points], "
                 "top=d.read_text('top_level.txt'))))" % DIST], installed["outside"])
    assert meta.returncode == 0, meta.stderr
    info = json.loads(meta.stdout)
    in_site = [f for f in info["files"] if not f.startswith("..")]  # ../../../bin/<command> is the script
    tops = {f.replace("\\", "/").split("/")[0] for f in in_site}
    assert all(t in (f"{MODULE}.py", "__pycache__") or t.endswith(".dist-info") for t in tops), tops
    assert f"{MODULE}.py" in tops
    assert not any(t.split(".")[0] in NOT_PACKAGED for t in tops), tops
    assert info["top"].split() == [MODULE]
    assert [COMMAND, f"{MODULE}:diffusers_cli"] in [e[1:] for e in info["eps"] if e[0] == "console_scripts"]
    base = [r for r in info["requires"] if "extra ==" not in r]
    names = {r.split(">")[0].split("=")[0].split("<")[0].strip().lower() for r in base}
    assert names == {"torch", "numpy", "loguru"}, base
    assert all(">=" in s and "==" not in s and "<" not in s for s in base), f"not lower bounds only: {base}"
    # the extra is bounded to the tested releases: pip must not resolve it to an untested major change
    extra = {re.match(r"[\w.-]+", r).group(0): r.split(";")[0] for r in info["requires"]
             if 'extra == "diffusers"' in r}
    assert ">=0.32" in extra["diffusers"] and "<0.39" in extra["diffusers"], extra
    assert "<5" in extra["transformers"], extra


def test_wheel_holds_only_the_module(source, tmp_path):
    out = _run([sys.executable, "-m", "pip", "wheel", *PIP_OFFLINE, "-w", tmp_path, source], tmp_path)
    assert out.returncode == 0, f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert f"{MODULE}.py" in tops and all(t == f"{MODULE}.py" or t.endswith(".dist-info") for t in tops), tops
    assert not any(n.split("/")[0] in NOT_PACKAGED or n.endswith(".safetensors") for n in names), names
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE") for n in names)
