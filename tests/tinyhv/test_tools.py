"""The command-line tools' rough edges (issue 11): up-front errors, outputs exactly where asked, OpenMP policy."""

import csv
import importlib.util
import os
import subprocess
import sys

import imageio.v2 as imageio
import pytest
import torch

from conftest import ROOT
from tinyhv import evaluate


# -- benchmarks/bench_upstream.py ---------------------------------------------- #

def _bench_upstream(env_root, *args, timeout=60):
    env = {k: v for k, v in os.environ.items() if k != "HUNYUANVIDEO_ROOT"}
    if env_root is not None:
        env["HUNYUANVIDEO_ROOT"] = str(env_root)
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_upstream.py"), *args], env=env,
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_bench_upstream_without_root_fails_up_front():
    proc = _bench_upstream(None)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "bench_upstream.py: error: HUNYUANVIDEO_ROOT is not set: point it at a checkout of Tencent/HunyuanVideo "
        "(the directory that contains hyvideo/)"]


def test_bench_upstream_root_without_hyvideo_fails_up_front(tmp_path):
    proc = _bench_upstream(tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and "does not contain a hyvideo/ package" in proc.stderr


def test_bench_upstream_surfaces_a_child_error(tmp_path):
    (tmp_path / "hyvideo").mkdir()  # passes the up-front check; the child then fails importing upstream's modules
    proc = _bench_upstream(tmp_path, "--settings", "off", "--steps", "2")
    assert proc.returncode == 1, proc.stderr
    assert "CalledProcessError" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("bench_upstream.py: error: setting off failed (exit status 1): ModuleNotFoundError"), last
    assert "hyvideo_cpu.py" in proc.stderr  # the tail of the child's stderr comes above the one-line error


# -- benchmarks/bench_caches.py ------------------------------------------------ #

class WorkStarted(Exception):
    pass


@pytest.fixture
def bench_caches(monkeypatch):
    """benchmarks/bench_caches.py as a module whose work (building a subject, calibrating) raises WorkStarted."""
    monkeypatch.setattr(sys, "path", list(sys.path))  # the script prepends to sys.path
    monkeypatch.setenv("OMP_WAIT_POLICY", os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))  # its setdefault: no-op
    spec = importlib.util.spec_from_file_location("bench_caches_under_test", ROOT / "benchmarks" / "bench_caches.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def work(*_, **__):
        raise WorkStarted

    for name in ("Trained", "Random", "calibrate"):
        monkeypatch.setattr(module, name, work)

    def main(*args):
        monkeypatch.setattr(sys, "argv", ["bench_caches.py", *map(str, args)])
        return module.main()

    main.module = module
    return main


@pytest.mark.parametrize("kind", ["shapes", "scenes"])
def test_bench_caches_velocity_view_samples_the_same_clips(kind, monkeypatch):
    """The shipped models predict the clean sample; the ``skip="call"`` methods see them through ``Velocity``, as the
    real, velocity-predicting model is seen: the same clips uncached, bit for bit; a cache on the view skips whole
    calls (no block runs then); the model is left as it was."""
    monkeypatch.setattr(sys, "path", list(sys.path))  # the script prepends to sys.path
    spec = importlib.util.spec_from_file_location("bench_caches_velocity", ROOT / "benchmarks" / "bench_caches.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    subject = module.Trained(8, kind, cfg_scale=4.0, prompts=1)
    run = subject.eval_runs[0]
    blocks, n_blocks = module.block_counter(subject.transformer)
    with torch.no_grad():
        plain = subject.run(run)
        with subject.as_velocity():
            assert torch.equal(subject.run(run), plain)
        blocks[0] = 0
        out, _ = module.generate(subject, dict(rel_l1_thresh=1.0, indicator="transformation-rate", skip="call"), run)
    assert not torch.equal(out, plain) and blocks[0] % n_blocks == 0 and 0 < blocks[0] < 8 * n_blocks
    assert subject.model.config["prediction"] == "sample" and subject.model.transformer is subject.transformer
    assert "forward" not in vars(subject.transformer)


@pytest.fixture
def no_matplotlib(monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError


def test_bench_caches_without_matplotlib_fails_before_work(bench_caches, no_matplotlib, tmp_path, capsys):
    assert bench_caches("--model", "random", "--out", tmp_path / "r.csv") == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "pip install -r requirements-bench.txt" in err[0] and "--no-plot" in err[0]
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(WorkStarted):  # the CSV alone needs no matplotlib
        bench_caches("--model", "random", "--out", tmp_path / "r.csv", "--no-plot")


def test_bench_caches_replot_without_matplotlib_fails_up_front(bench_caches, no_matplotlib, tmp_path, capsys):
    table = tmp_path / "caches_random.csv"
    with table.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["method", "setting", "computed", "steps", "speedup", "psnr", "ssim"])
        writer.writeheader()
        writer.writerow(dict(method="teacache", setting=0.1, computed=25, steps=50, speedup=2, psnr=40, ssim=0.99))
    assert bench_caches("--replot", table) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "pip install -r requirements-bench.txt" in err[0]
    assert list(tmp_path.iterdir()) == [table]


def test_bench_caches_refuses_to_replace_results_unless_asked(bench_caches, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench_caches.module, "_have_matplotlib", lambda: True)  # (installed or not)
    out = tmp_path / "r.csv"
    out.write_text("a previous run\n")
    assert bench_caches("--model", "random", "--out", out) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and f"{out} exists" in err[0] and "--overwrite" in err[0]
    assert out.read_text() == "a previous run\n"
    out.unlink()
    out.with_suffix(".png").write_bytes(b"a previous plot")  # the plot it would write counts too
    assert bench_caches("--model", "random", "--out", out) == 2
    with pytest.raises(WorkStarted):
        bench_caches("--model", "random", "--out", out, "--overwrite")


def _rows_csv(path, rows):
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["method", "setting", "computed", "steps", "block_steps", "speedup",
                                               "psnr", "psnr_prompts"])
        writer.writeheader()
        for method, setting, computed, speedup, prompts in rows:  # a first-block cache: 4 more steps of blocks
            writer.writerow(dict(method=method, setting=setting, computed=computed, steps=50, speedup=speedup,
                                 block_steps=computed + (4 if method == "b" else 0), psnr=sum(prompts) / len(prompts),
                                 psnr_prompts=";".join(map(str, prompts))))
    return path


def test_bench_caches_paired_at_a_budget_interpolates_each_prompt(bench_caches, tmp_path, capsys):
    table = _rows_csv(tmp_path / "t.csv", [
        ("a", 0.3, 20, 2.4, [20.0, 10.0]), ("a", 0.2, 24, 2.0, [24.0, 18.0]), ("a", 0.1, 30, 1.6, [30.0, 25.0]),
        ("b", 0.3, 21, 2.2, [19.0, 12.0]), ("b", 0.2, 23, 2.1, [21.0, 14.0]), ("b", 0.1, 22, 1.8, [float("inf"), 0])])
    # a at 22 computed: halfway between 20 and 24 -> (22, 14); b: the inf row is left out -> between 21 and 23 (20, 13)
    assert bench_caches("--replot", table, "--budget", "22", "--paired", "a", "b") == 0
    out = capsys.readouterr().out
    assert out.startswith("a 0.3..0.2 (22.0 computed) - b 0.3..0.2 (22.0 computed): +1.50 ± ")
    assert "ahead on 2; worst prompt 14.00 against 13.00 dB" in out
    # an exact setting, a named row against a budget, a measured speedup (a at 2.2x: halfway between 2.4x and 2.0x)
    assert bench_caches("--replot", table, "--budget", "24", "--paired", "a", "b=0.3") == 0
    assert capsys.readouterr().out.startswith("a 0.2 (24.0 computed) - b 0.3 (21.0 computed): +5.50 ± ")
    assert bench_caches("--replot", table, "--budget", "2.2x", "--paired", "a", "b") == 0
    assert capsys.readouterr().out.startswith("a 0.2..0.3 at 2.2x (22.0 computed) - b 0.3 at 2.2x (21.0 computed): +2.50")
    # at 25 steps' worth of blocks run: a at 25 computed (24..30), b's rows at 25 and 27 blocks -> its 0.3 row
    assert bench_caches("--replot", table, "--budget", "25b", "--paired", "a", "b") == 0
    assert capsys.readouterr().out.startswith("a 0.2..0.1 at 25b (25.0 computed) - b 0.3 at 25b (21.0 computed): +6.58")
    # a budget outside a method's settings, a bare method without a budget, a bad budget: one line each
    assert bench_caches("--replot", table, "--budget", "31", "--paired", "a", "b") == 2
    assert capsys.readouterr().err.strip().endswith("no row with per-prompt PSNRs for a on both sides of 31 computed steps")
    assert bench_caches("--replot", table, "--paired", "a", "b=0.3") == 2
    assert "pass --budget K" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_caches("--replot", table, "--budget", "fast", "--paired", "a", "b")
    assert "a measured speedup (2.0x) or steps' worth of blocks run (22b), got 'fast'" in capsys.readouterr().err


# -- tinyhv.evaluate ------------------------------------------------------------ #

def _evaluate(*args):
    return evaluate.main(["--ground-truth", "--max-combos", "2", "--seeds", "2", "--threads",
                          str(torch.get_num_threads()), *map(str, args)])


def test_evaluate_grid_exactly_at_the_given_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    grid = tmp_path / "sub" / "X.png"
    assert _evaluate("--grid", grid, "--grid-rows", 3) == 0
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["sub", "sub/X.png"]
    image = imageio.imread(grid)
    clip_h = data_clip_shape()[1] * 6 + 2  # save_grid: scale 6, pad 2
    assert image.shape[0] == 3 * clip_h + 2


def test_evaluate_both_splits_make_one_grid(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert _evaluate("--split", "both", "--grid", "X.png", "--grid-rows", 2, "--json", "r.json") == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["X.png", "r.json"]
    assert imageio.imread(tmp_path / "X.png").shape[0] == 4 * (data_clip_shape()[1] * 6 + 2) + 2
    out = capsys.readouterr().out
    assert "held-out: " in out and "train: " in out


def test_evaluate_writes_no_grid_unless_asked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def save_grid(*_, **__):
        raise AssertionError("a grid was written without --grid")

    monkeypatch.setattr(evaluate, "save_grid", save_grid)
    assert _evaluate() == 0
    assert list(tmp_path.iterdir()) == []


def test_evaluate_refuses_a_grid_that_is_not_an_image_before_the_run(capsys):
    with pytest.raises(SystemExit) as exit_:
        _evaluate("--grid", "X")
    assert exit_.value.code == 2 and "--grid X" in capsys.readouterr().err


def data_clip_shape():
    from tinyhv import data

    g = torch.Generator().manual_seed(0)
    attrs = data.split()[1][:1]
    return tuple(data.render_batch(attrs, data.random_starts(attrs, g))[0].shape)  # (T, H, W, 3)


# -- OMP_WAIT_POLICY=PASSIVE by default when run as a command ------------------- #

# Runs a module as ``python -m`` would and prints OMP_WAIT_POLICY as it was when torch was first imported
# (OpenMP reads it then), or "torch never imported".
_AT_TORCH_IMPORT = """
import os, runpy, sys
seen = []
class Watch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not seen:
            seen.append(os.environ.get("OMP_WAIT_POLICY", "<unset>"))
        return None
sys.meta_path.insert(0, Watch())
sys.argv = [sys.argv[1], "--help"]
try:
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
except SystemExit:
    pass
sys.stderr.write("OMP at torch import: " + (seen[0] if seen else "torch never imported") + "\\n")
"""


@pytest.mark.parametrize("module", ["tinyhv.evaluate", "tinyhv.evaluate_scenes", "tinyhv.train"])
def test_module_launch_sets_passive_omp_before_torch_loads(module):
    def at_torch_import(env):
        proc = subprocess.run([sys.executable, "-c", _AT_TORCH_IMPORT, module], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and proc.stdout.startswith("usage:"), proc.stderr[-2000:]
        return proc.stderr.strip().splitlines()[-1]

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert at_torch_import(env) == "OMP at torch import: PASSIVE"
    assert at_torch_import({**env, "OMP_WAIT_POLICY": "ACTIVE"}) == "OMP at torch import: ACTIVE"  # the user's wins


def test_importing_tinyhv_leaves_omp_alone():
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    code = "import os, tinyhv.evaluate, tinyhv.train; print(os.environ.get('OMP_WAIT_POLICY', '<unset>'))"
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "<unset>", proc.stderr[-2000:]


def test_bench_caches_runs_end_to_end_and_writes_its_csv(tmp_path):
    """A short real run (the shipped model, 4 steps, one method): the table's rows reach the CSV."""
    out = tmp_path / "short.csv"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_caches.py"), "--model", "trained",
                           "--steps", "4", "--methods", "teacache", "--no-plot", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == ["none"] + ["teacache"] * 7
    assert all(r["steps"] == "4" and 1 <= float(r["computed"]) <= 4 for r in rows)
    # TeaCache runs all blocks of a step or none: the blocks run, in steps, are the computed steps
    assert all(float(r["block_steps"]) == float(r["computed"]) for r in rows)
    assert rows[0]["block_steps"] == "4.0"
    assert f"wrote {out}" in proc.stdout
