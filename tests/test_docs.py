"""The documentation runs as written: every README snippet on its own, each page of the user
guide as a whole, the tutorial notebook with a real kernel, and the site built by
`mkdocs build --strict` (no broken link, no missing reference) with every public name in its
API reference."""

from __future__ import annotations

import importlib
import inspect
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import cgraph as cg

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
VENV = Path(sys.prefix)  # what `.venv/` means here: the environment running the tests


def blocks(path: Path) -> list[tuple[str, str]]:
    """(language, code) of every fenced block of a Markdown file."""
    return FENCE.findall(path.read_text())


def env() -> dict[str, str]:
    """This checkout's cgraph first, whatever is installed."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def run(args: list[str], cwd: Path, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout, **kw)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


README_PY = [code for lang, code in blocks(ROOT / "README.md") if lang == "python"]


def test_readme_blocks_are_all_tagged():
    langs = [lang for lang, _ in blocks(ROOT / "README.md")]
    assert set(langs) <= {"python", "sh", "text"}, langs  # text: pictures, not commands
    assert len(README_PY) >= 6


@pytest.mark.parametrize("i", range(len(README_PY)))
def test_readme_python_snippet_runs_on_its_own(i, tmp_path):
    (tmp_path / "snippet.py").write_text(README_PY[i])
    run([sys.executable, "snippet.py"], tmp_path)


def test_readme_shell_snippets_run_as_written(tmp_path):
    """In a scratch copy of the examples, with `.venv` this environment, in the README's order
    (the command-line block reads the main job's model). Installing and the test command are
    what CI runs, so they are checked against .ci/run instead of run here."""
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    shutil.copytree(ROOT / "examples", tmp_path / "examples", ignore=shutil.ignore_patterns("*.ipynb", "__pycache__"))
    (tmp_path / ".venv").symlink_to(VENV)
    script = ["set -euo pipefail"]
    for lang, code in blocks(ROOT / "README.md"):
        if lang != "sh":
            continue
        for line in code.splitlines():
            line = re.sub(r"(^|\s)#.*", "", line)  # comments
            for command in filter(None, (c.strip() for c in line.split("&&"))):
                if command.startswith("bash tools/setup.sh") or command.startswith(".venv/bin/ruff") \
                        or "pytest" in command:
                    assert command in ci or command == "bash tools/setup.sh", command
                else:
                    script.append(command)
    assert any("examples/iris_mlp.py" in c for c in script) and any("cgraph info" in c for c in script)
    done = run(["bash", "-c", "\n".join(script)], tmp_path)
    assert "it predicts identically: True" in done.stdout and "ok (format version" in done.stdout
    assert (tmp_path / "out" / "iris-from-onnx.pb").is_file() and (tmp_path / "out" / "iris-lr.svg").is_file()


GUIDE = sorted((ROOT / "docs" / "guide").glob("*.md"))


@pytest.mark.parametrize("page", GUIDE, ids=[p.stem for p in GUIDE])
def test_guide_page_runs_as_a_session(page, tmp_path):
    """A page's Python blocks in order, in one interpreter, as a reader would type them."""
    code = "\n\n".join(c for lang, c in blocks(page) if lang == "python")
    if not code:
        pytest.skip("no Python on this page")
    (tmp_path / "page.py").write_text(code)
    shutil.copytree(ROOT / "examples", tmp_path / "examples", ignore=shutil.ignore_patterns("*.ipynb"))
    run([sys.executable, "page.py"], tmp_path)


def test_tutorial_notebook_runs_and_is_stored_without_outputs(monkeypatch, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    path = ROOT / "examples" / "tutorial.ipynb"
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, "store the notebook without outputs"
    # The kernel inherits the environment: this checkout's cgraph, and examples/ as if run from there
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT / "examples"), env()["PYTHONPATH"]]))
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})  # files it writes go here
    client.execute()  # CellExecutionError on the first failing cell
    shown = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.get("output_type") == "display_data"
             or o.get("output_type") == "execute_result"]
    svgs = [o for o in shown if "image/svg+xml" in o.get("data", {})]
    assert len(svgs) >= 4  # the graph, the forward and reverse sweeps, a memory plan


def test_mkdocs_build_is_strict_and_complete(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    site = tmp_path / "site"
    run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], ROOT, timeout=600)
    api = "\n".join(p.read_text() for p in (site / "reference").rglob("index.html"))
    missing = [name for name in public_names() if f'id="{name}"' not in api]
    assert not missing, f"not in the API reference: {missing}"
    undocumented = [name for name in public_names() if callable(obj := resolve(name)) and not inspect.getdoc(obj)]
    assert not undocumented, f"no docstring: {undocumented}"
    assert (site / "ops" / "index.html").is_file() and (site / "format" / "index.html").is_file()


def resolve(dotted: str) -> object:
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def public_names() -> list[str]:
    """Every public name as the reference anchors it: cgraph.X, cgraph.nn.X, cgraph.optim.X,
    cgraph.onnx.X, cgraph.train.History (what fit returns)."""
    names = [f"cgraph.{n}" for n in cg.__all__ if n not in ("nn", "optim", "onnx")]
    for mod in (cg.nn, cg.optim, cg.onnx):
        names += [f"{mod.__name__}.{n}" for n in mod.__all__]
    return names + ["cgraph.train.History", "cgraph.render.RenderOptions"]


REPO_PATH = re.compile(r"(?<![\w./:-])((?:[\w.-]+/)+[\w.-]+\.(?:md|py|proto|ipynb|yml|toml|txt|pb|svg|png|onnx))\b")


def test_nothing_points_outside_the_repository():
    """Every file a document names (a relative path) is one of the repository's, or an output
    the examples write under out/; no document names an absolute path of a machine."""
    for doc in [*ROOT.glob("*.md"), *(ROOT / "docs").rglob("*.md"), ROOT / "mkdocs.yml",
                ROOT / "examples" / "tutorial.ipynb"]:
        text = doc.read_text()
        for name in REPO_PATH.findall(text):
            held = any((base / name).exists() for base in (ROOT, doc.parent, ROOT / "docs"))
            assert held or name.startswith("out/"), f"{doc.relative_to(ROOT)} names {name}, which the repository lacks"
        assert not re.search(r"(?<![\w.])/(?:work|root|home)/", text), doc


def test_cli_page_names_every_subcommand_and_option():
    from cgraph.cli import build_parser

    page = (ROOT / "docs" / "cli.md").read_text()
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]  # argparse keeps subparsers here
    for name, p in sub.choices.items():
        assert f"## cgraph {name}" in page, name
        for action in p._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert f"`{flag}`" in page or f"{flag} " in page, f"cgraph {name} {flag}"
