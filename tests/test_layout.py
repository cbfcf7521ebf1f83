"""The package's layout stays as CONTRIBUTING.md describes it: subpackages in layers, each importing
only from the layers below it, and every name imported from the module that defines it."""
import ast
from pathlib import Path

import charrnn

PACKAGE = Path(charrnn.__file__).resolve().parent

# Lowest first. A module may import from its own subpackage and from any subpackage of a lower
# rank; data and nn share a rank and import nothing from each other.
LAYERS = {
    "base": 0,
    "runtime": 1,
    "data": 2, "nn": 2,
    "infer": 3,
    "training": 4,
    "analysis": 5,
    "experiments": 6, "serve": 6,
    "cli": 7,
}
TOP = 8  # charrnn/__init__.py, __main__.py and entry.py, above everything


def modules():
    """(dotted name, path) of every module of the package."""
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path


def layer_of(module):
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else None


def rank(module):
    layer = layer_of(module)
    return TOP if layer is None else LAYERS[layer]


def charrnn_imports(path):
    """(line, imported module, names or None) of every import of a charrnn module in `path`,
    wherever it stands (functions included)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: relative import; charrnn imports by full name"
            if node.module.split(".")[0] == "charrnn":
                yield node.lineno, node.module, [alias.name for alias in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "charrnn":
                    yield node.lineno, alias.name, None


def defined_names(path):
    """Names a module defines at its top level (functions, classes, assignments)."""
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.Try, ast.If)):
            names.update(n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store))
    return names


def test_every_module_belongs_to_a_layer():
    flat = [module for module, _ in modules() if layer_of(module) is None]
    assert sorted(flat) == ["charrnn", "charrnn.__main__", "charrnn.entry"]
    assert {path.name for path in PACKAGE.iterdir() if path.is_dir() and (path / "__init__.py").exists()} == set(LAYERS)


def test_no_module_imports_from_a_higher_layer_or_a_sibling_layer():
    wrong = []
    for module, path in modules():
        for line, imported, _ in charrnn_imports(path):
            same_layer = layer_of(imported) == layer_of(module)
            if not same_layer and rank(imported) >= rank(module) and rank(module) != TOP:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {imported}")
    assert wrong == []


def test_every_name_is_imported_from_the_module_that_defines_it():
    """No re-exports: `from charrnn.X import name` finds `name` defined in X itself (or a
    submodule X.name)."""
    paths = dict(modules())
    through = []
    for module, path in modules():
        for line, imported, names in charrnn_imports(path):
            if names is None or imported not in paths:
                continue
            defined = defined_names(paths[imported])
            for name in names:
                if name not in defined and f"{imported}.{name}" not in paths:
                    through.append(f"{path.relative_to(PACKAGE.parent)}:{line} takes {name} from {imported}")
    assert through == []


def test_the_public_names_point_at_their_defining_modules():
    paths = dict(modules())
    for name, module in charrnn._MODULE_OF.items():
        assert name in defined_names(paths[f"charrnn.{module}"]), f"charrnn.{name} is not defined in {module}"
