"""The package's layers, as the README draws them: each module imports (at run time) only from
its own layer and the layers above it, so that a change low down never needs one higher up."""

import ast
from pathlib import Path

CGRAPH = Path(__file__).resolve().parent.parent / "cgraph"
LAYERS = [
    {"errors", "shapes", "memory", "version", "patterns", "files"},
    {"ops.registry"},
    {"graph"},
    {"ops", "ops.array", "ops.elementwise", "ops.reduce", "ops.nn", "ops.conv"},
    {"autodiff", "simplify", "batching"},
    {"schedule", "codegen", "checkpoint", "control"},
    {"executors", "executors.base", "executors.evaluator", "executors.forward", "executors.reverse"},
    {"jacobian", "tracing"},
    {"io", "render", "onnx", "onnx._common", "onnx._export", "onnx._import", "onnx._import_control", "_proto"},
    {"nn", "optim", "train", "cli", "__main__", ""},  # "": the package itself, `import cgraph`
]
LAYER = {m: i for i, layer in enumerate(LAYERS) for m in layer}


def runtime_imports(path: Path) -> set[str]:
    """The cgraph modules `path` imports, leaving out `if TYPE_CHECKING:` blocks."""
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for child in node.body for n in ast.walk(child)}
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else \
            [a.name for a in node.names] if isinstance(node, ast.Import) else []
        for name in names:
            if name == "cgraph" or name.startswith("cgraph."):
                out.add(name[len("cgraph."):] if "." in name else "")
    return out


def test_every_module_imports_only_from_its_layer_and_those_above():
    checked = 0
    for path in CGRAPH.rglob("*.py"):
        rel = path.relative_to(CGRAPH).with_suffix("")
        if rel.parts[0] == "_proto":
            continue
        module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        assert module in LAYER, f"{module}: add it to the README's picture and to LAYERS"
        for dep in runtime_imports(path):
            dep = dep if dep in LAYER else dep.rsplit(".", 1)[0]
            if module == "" and dep:
                continue  # the package's __init__ gathers the public surface from everywhere
            assert LAYER[dep] <= LAYER[module], f"cgraph.{module} (layer {LAYER[module]}) imports cgraph.{dep} " \
                                                f"(layer {LAYER[dep]})"
        checked += 1
    assert checked > 30
