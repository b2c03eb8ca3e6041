"""The package as users get it: the sdist and the wheel build (the wheel from the sdist, so the
sdist is complete), pass `twine check`, install into a clean virtual environment and work
there (the command, a model file, a short training, the type hints shipped); and cgraph/
type-checks with mypy."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import cgraph as cg

ROOT = Path(__file__).resolve().parent.parent


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout


def test_wheel_builds_passes_twine_and_works_in_a_clean_venv(tmp_path):
    pytest.importorskip("build")
    pytest.importorskip("twine")
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)], ROOT)
    wheels, sdists = list(dist.glob("*.whl")), list(dist.glob("*.tar.gz"))
    assert len(wheels) == len(sdists) == 1 and wheels[0].name.startswith(f"cgraph_ad-{cg.__version__}-")
    run([sys.executable, "-m", "twine", "check", "--strict", *map(str, wheels + sdists)], tmp_path)

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], tmp_path)
    bin_ = venv / "bin"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run([str(bin_ / "python"), "-m", "pip", "install", "-q", str(wheels[0])], tmp_path, env)
    work = tmp_path / "work"  # not the checkout: only the installed package can be imported
    work.mkdir()
    assert run([str(bin_ / "cgraph"), "--version"], work, env).strip() == f"cgraph {cg.__version__}"
    script = textwrap.dedent("""
        from pathlib import Path
        import numpy as np
        import cgraph as cg
        assert "site-packages" in cg.__file__, cg.__file__
        assert (Path(cg.__file__).parent / "py.typed").is_file()
        rng = np.random.default_rng(0)
        X = rng.normal(size=(60, 2))
        Y = np.eye(2)[(X[:, 0] * X[:, 1] > 0).astype(int)]
        g = cg.nn.mlp([2, 8, 2], hidden="tanh", seed=0)
        h = cg.fit(g, {"x": X, "y": Y}, cg.optim.Adam(lr=0.05), epochs=100, progress=False)
        assert h.loss[-1] < 0.5 * h.loss[0], h.loss
        cg.save(g, "model.pb")
        assert np.array_equal(cg.predict(cg.load("model.pb"), X), cg.predict(g, X))
        print("trained", h.loss[0], h.loss[-1])
    """)
    (work / "train.py").write_text(script)
    assert "trained" in run([str(bin_ / "python"), "train.py"], work, env)
    info = run([str(bin_ / "cgraph"), "info", "model.pb"], work, env)
    assert "layer0/W" in info and "format version" in info
    assert "ok" in run([str(bin_ / "cgraph"), "check", "model.pb"], work, env)


def test_cgraph_type_checks():
    pytest.importorskip("mypy")
    out = run([sys.executable, "-m", "mypy"], ROOT)  # files and settings: [tool.mypy] in pyproject.toml
    assert "Success" in out
