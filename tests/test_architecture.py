"""The house rules of docs/architecture.md, read from the code: every import of every
module (type-only and function-level ones included) goes down the layers, no two modules
import each other in a loop, and each third-party library is imported in one room."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "flowgpt"

# Lowest first: a module may import only modules of lower layers and of its own layer's
# package (the top-level modules of one layer may import each other).
LAYERS: list[tuple[str, ...]] = [
    ("flowgpt.errors", "flowgpt.usage", "flowgpt.money"),
    ("flowgpt.results",),
    ("flowgpt.templating",),
    ("flowgpt.spec",),
    ("flowgpt.accounting",),
    ("flowgpt.providers",),
    ("flowgpt.store",),
    ("flowgpt.tracing",),  # the engine calls into it; it never calls the engine
    ("flowgpt.engine",),
    ("flowgpt.testing",),  # tests of workflows: they run through the engine
    ("flowgpt.chat",),
    ("flowgpt.ui",),  # `flowgpt ui`: web pages that read the store; the CLI starts them
    ("flowgpt.cli",),
    ("flowgpt", "flowgpt.__main__"),  # the public API and the entry point
]

# Third-party libraries and the only places that may import them.
ROOMS: dict[str, tuple[str, ...]] = {
    "openai": ("flowgpt.providers",),
    "httpx2": ("flowgpt.providers.openai",),
    "click": ("flowgpt.cli",),
    "rich": ("flowgpt.cli", "flowgpt.results"),  # the cost table is part of the result
    # The prompt sandbox; and the UI's own HTML templates, escaped, apart from the sandbox.
    "jinja2": ("flowgpt.templating",),
    "starlette": ("flowgpt.ui.app",),
    "uvicorn": ("flowgpt.ui.server",),
    "yaml": ("flowgpt.spec.loader",),
    "tiktoken": ("flowgpt.accounting.tokens",),
    "tiktoken_ext": ("flowgpt.accounting.tokens",),
    "genai_prices": ("flowgpt.accounting.prices",),
    "llama_cpp": ("flowgpt.providers.local",),
    "sqlite3": ("flowgpt.store",),
    "pytest": ("flowgpt.testing.pytest_plugin",),  # the opt-in plugin for users' suites
    "opentelemetry": ("flowgpt.tracing.otel",),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every module ``name`` imports, anywhere in the file (absolute names)."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from flowgpt import templating` imports the module flowgpt.templating (the
            # package itself only as the parent every submodule has)
            submodules = {f"{base}.{a.name}" for a in node.names} & MODULES.keys()
            found.update(submodules)
            if len(submodules) < len(node.names):
                found.add(base)
    return found


def _internal(imported: str) -> str | None:
    """The flowgpt module an import names (a name inside a module maps to the module)."""
    while imported and imported not in MODULES:
        imported = imported.rpartition(".")[0]
    return imported or None


GRAPH: dict[str, set[str]] = {
    name: {
        target
        for imported in _imports(name, path)
        if imported.split(".")[0] == "flowgpt"
        and (target := _internal(imported)) is not None
        and target != name
    }
    for name, path in MODULES.items()
}


def _layer(module: str) -> tuple[int, str]:
    best = (-1, "")
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best[1]):
                best = (index, prefix)
    return best


def test_every_module_has_a_layer() -> None:
    assert [m for m in MODULES if _layer(m)[0] < 0] == []


def test_no_import_circles() -> None:
    # A package's __init__ re-exports from its modules; a module importing its own
    # package's __init__ would close a loop, so __init__ counts like any module here.
    try:
        graphlib.TopologicalSorter(GRAPH).prepare()
    except graphlib.CycleError as exc:
        pytest.fail(f"import circle: {' -> '.join(exc.args[1])}")


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down_the_layers(module: str) -> None:
    layer, package = _layer(module)
    wrong = []
    for target in GRAPH[module]:
        target_layer, target_package = _layer(target)
        beside = target_layer == layer and target_package != package
        # The bottom layer's modules (errors, usage, money) may share; packages may not.
        if (target_layer > layer or beside) and not target_layer == layer == 0:
            wrong.append(target)
    assert wrong == [], f"{module} imports from above (or beside) its layer: {sorted(wrong)}"


@pytest.mark.parametrize("library", sorted(ROOMS))
def test_each_library_is_imported_in_one_room(library: str) -> None:
    allowed = ROOMS[library]
    outside = sorted(
        name
        for name, path in MODULES.items()
        if any(i == library or i.startswith(library + ".") for i in _imports(name, path))
        and not any(name == room or name.startswith(room + ".") for room in allowed)
    )
    assert outside == [], f"{library} is imported outside {allowed}: {outside}"


def test_no_private_sdk_modules_and_no_raw_posts() -> None:
    for name, path in MODULES.items():
        private = sorted(i for i in _imports(name, path) if i.startswith("openai._"))
        assert private == [], f"{name} imports the openai SDK's private modules {private}"
        posts = [
            node.lineno
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "post"
        ]
        # The SDK is called through chat.completions.create(), not a raw client.post().
        assert posts == [] or not name.startswith("flowgpt.providers"), (name, posts)


def test_a_handful_of_modules_at_the_top() -> None:
    top = sorted(
        p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py")
    )
    assert len(top) <= 8, top


def test_each_class_lives_whole_in_one_file() -> None:
    # A class assembled from mixins declared in other files of the package (or a class
    # that subclasses one of flowgpt's own classes to add half its behaviour) is one class
    # spread over several files: composition instead.
    spread = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ClassDef):
                continue
            for base in node.bases:
                base_name = ast.unparse(base)
                if base_name.startswith("_") and not base_name.startswith("__"):
                    defined_here = any(
                        isinstance(n, ast.ClassDef) and n.name == base_name
                        for n in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                    )
                    if not defined_here:
                        spread.append(f"{name}.{node.name}({base_name})")
    assert spread == []
