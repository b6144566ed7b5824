"""The remote-code bundle: Mova's model code as flat modules inside an exported folder.

``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`` imports the file named in
``config.json``'s ``auto_map`` from a package that transformers makes out of the folder's ``*.py`` files,
so the model code must live there as *flat* modules importing each other relatively
(``from .fusion import ...``). This module writes them from Mova's own sources:

* it walks the imports (module level and inside functions) from the model and processor modules and
  takes every first-party module they reach, and nothing else;
* it rewrites first-party imports to the flat names (``mova.model.fusion`` -> ``.fusion``,
  ``mova.model.experts.clip`` -> ``.experts_clip``, ``mova.errors`` -> ``.mova_errors``);
* the experts package's ``__init__`` is replaced by one that registers only the families the checkpoint
  uses, so that loading a CLIP + SAM model does not require timm, rapidocr, ... (transformers checks that
  every library a remote module imports is installed);
* it refuses, naming the import chain, what it cannot bundle faithfully: an import of a module that is
  neither first-party nor installed, a first-party module that must not ship with a model (training,
  CLI, evaluation code), an import form it cannot rewrite, and a bundled file that transformers would
  not copy (its relative-import scan is a regular expression).

The third-party libraries reached are returned with their distributions and versions, for the model
card and ``requirements.txt``.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.metadata
import importlib.util
import inspect
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from mova.errors import MovaError

#: where the walk starts: the modules named in ``auto_map``.
ROOT_MODULES = ("mova.model.modeling_mova", "mova.model.processing_mova")
#: first-party code that a model must never pull in (training loops, CLI, evaluation, export itself).
EXCLUDED_PREFIXES = ("mova.cli", "mova.demo", "mova.trainers", "mova.evaluation", "mova.export", "mova.rl",
                     "mova.inference", "mova.metrics")
#: the package whose ``__init__`` is replaced by one that imports only the checkpoint's families.
EXPERTS_PACKAGE = "mova.model.experts"
#: the header that marks a bundled file (and lets a re-export recognise and replace old ones).
HEADER = "# Written by `mova export` from Mova's sources; imports are rewritten to this folder's flat modules.\n"

# transformers' own scan for the files to copy with a remote module (dynamic_module_utils).
_RELATIVE_IMPORT = re.compile(r"^\s*from\s+\.(\S+)\s+import", flags=re.MULTILINE)


class BundleError(MovaError, RuntimeError):
    """The model code cannot be bundled as it is; the message names the module and import."""


@dataclass
class Bundle:
    """The flat modules (file name -> source) and the third-party libraries they import."""

    files: dict[str, str]
    #: import name -> ``distribution==version`` (or the bare import name when no distribution owns it).
    requirements: dict[str, str] = field(default_factory=dict)
    #: first-party module -> flat module name.
    modules: dict[str, str] = field(default_factory=dict)

    def write(self, folder: str | Path) -> list[Path]:
        """Write the modules into ``folder``, removing bundled files of an earlier export first."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.py"):
            if old.read_text(encoding="utf-8", errors="replace").startswith(HEADER):
                old.unlink()
        paths = []
        for name, source in sorted(self.files.items()):
            path = folder / name
            path.write_text(source, encoding="utf-8")
            paths.append(path)
        return paths


def flat_name(module: str, package: str = "mova") -> str:
    """The bundle's module name for a first-party module: ``mova.model.`` is dropped, other ``mova.``
    modules keep a ``mova_`` prefix (``mova.errors`` -> ``mova_errors``), dots become underscores."""
    model_prefix = f"{package}.model."
    if module.startswith(model_prefix):
        return module[len(model_prefix):].replace(".", "_")
    return module.replace(".", "_")


def _is_first_party(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _is_package(module: str) -> bool:
    spec = importlib.util.find_spec(module)
    return spec is not None and spec.submodule_search_locations is not None


def _is_module(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _source_of(module: str) -> str:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        raise BundleError(f"cannot find the Python source of {module}")
    return Path(spec.origin).read_text(encoding="utf-8")


@functools.lru_cache(maxsize=1)
def _packages_distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def _distribution(top: str) -> str:
    """``name==version`` of the installed distribution that provides import name ``top``."""
    dists = _packages_distributions().get(top)
    if not dists:
        return top
    name = dists[0]
    try:
        return f"{name}=={importlib.metadata.version(name)}"
    except importlib.metadata.PackageNotFoundError:
        return name


def _absolute(node: ast.ImportFrom, module: str, is_pkg: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


@dataclass
class _Rewrite:
    """One import statement's replacement text and the first-party modules it needs."""

    node: ast.stmt
    lines: list[str]


class _Walker:
    def __init__(self, package: str, generated: dict[str, str], excluded: tuple[str, ...]):
        self.package = package
        self.generated = generated
        self.excluded = excluded
        self.modules: dict[str, str] = {}  # module -> flat name
        self.sources: dict[str, str] = {}  # flat name -> rewritten source
        self.requirements: dict[str, str] = {}
        self.parents: dict[str, str] = {}

    def chain(self, module: str) -> str:
        path = [module]
        while path[-1] in self.parents:
            path.append(self.parents[path[-1]])
        return " <- ".join(path)

    def need(self, module: str, by: str) -> str:
        if any(module == p or module.startswith(p + ".") for p in self.excluded):
            raise BundleError(f"the model code imports {module}, which does not ship with a model "
                              f"(import chain: {module} <- {self.chain(by)}); move what the model needs "
                              "out of it")
        if module not in self.modules:
            if module not in self.generated and not _is_module(module):
                raise BundleError(f"{self.chain(by)} imports {module}, which cannot be found")
            name = flat_name(module, self.package)
            clash = [m for m, n in self.modules.items() if n == name]
            if clash:
                raise BundleError(f"{module} and {clash[0]} would both be bundled as {name}.py")
            self.modules[module] = name
            self.parents[module] = by
            self.visit(module)
        return self.modules[module]

    def third_party(self, top: str, importer: str) -> None:
        if top in sys.stdlib_module_names or top == "__future__" or top in self.requirements:
            return
        if not _is_module(top):
            raise BundleError(f"{self.chain(importer)} imports {top!r}, which is neither in the bundle nor an "
                              "installed library; the exported model could not load it")
        self.requirements[top] = _distribution(top)

    def visit(self, module: str) -> None:
        source = self.generated.get(module) or _source_of(module)
        is_pkg = module in self.generated or _is_package(module)
        tree = ast.parse(source)
        rewrites: list[_Rewrite] = []
        uses_package_name = any(isinstance(n, ast.Name) and n.id == self.package for n in ast.walk(tree))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                target = _absolute(node, module, is_pkg)
                if not _is_first_party(target, self.package):
                    self.third_party(target.split(".")[0], module)
                    continue
                lines, names = [], []
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    if alias.name != "*" and (sub in self.generated or (_is_package(target) and _is_module(sub))):
                        flat = self.need(sub, module)
                        lines.append(f"from . import {flat} as {alias.asname or alias.name}")
                    else:
                        names.append(alias.name + (f" as {alias.asname}" if alias.asname else ""))
                if names:
                    lines.insert(0, f"from .{self.need(target, module)} import {', '.join(names)}")
                rewrites.append(_Rewrite(node, lines))
            elif isinstance(node, ast.Import):
                lines = []
                first_party = False
                for alias in node.names:
                    if not _is_first_party(alias.name, self.package):
                        self.third_party(alias.name.split(".")[0], module)
                        lines.append(f"import {alias.name}" + (f" as {alias.asname}" if alias.asname else ""))
                        continue
                    first_party = True
                    flat = self.need(alias.name, module)
                    if alias.asname:
                        lines.append(f"from . import {flat} as {alias.asname}")
                    elif uses_package_name:
                        raise BundleError(f"{module} line {node.lineno}: `import {alias.name}` is used through "
                                          f"the name {self.package!r}, which a flat bundle cannot provide; "
                                          "import the names it needs instead")
                    else:  # imported for its side effects (registration)
                        lines.append(f"from . import {flat}  # noqa: F401")
                if first_party:
                    rewrites.append(_Rewrite(node, lines))
        self.sources[self.modules.get(module, flat_name(module, self.package))] = HEADER + _apply(source, rewrites,
                                                                                                 module)


def _apply(source: str, rewrites: list[_Rewrite], module: str) -> str:
    """Replace each rewritten statement's lines, keeping its indentation and a trailing comment."""
    lines = source.splitlines(keepends=True)
    for rw in sorted(rewrites, key=lambda r: r.node.lineno, reverse=True):
        start, end = rw.node.lineno - 1, rw.node.end_lineno - 1
        head = lines[start][: rw.node.col_offset]
        tail = lines[end][rw.node.end_col_offset:]
        if head.strip() or (tail.strip() and not tail.strip().startswith("#")):
            raise BundleError(f"{module} line {rw.node.lineno}: an import sharing its line with other code "
                              "cannot be rewritten; put it on its own line")
        comment = tail.rstrip("\n")
        body = [head + rw.lines[0]] + [head + text for text in rw.lines[1:]]
        if comment.strip() and "noqa" not in body[-1]:
            body[-1] += comment
        lines[start:end + 1] = [b + "\n" for b in body]
    return "".join(lines)


def experts_init_source(families: list[str]) -> str:
    """An experts package ``__init__`` that registers only ``families`` and re-exports the public names
    of the original package that live in the base module or in those families' modules."""
    experts = importlib.import_module(EXPERTS_PACKAGE)
    registry = experts.EXPERT_REGISTRY
    unknown = [f for f in families if f not in registry]
    if unknown:
        raise BundleError(f"unknown expert families {unknown}; known: {sorted(registry)}")
    homes = [f"{EXPERTS_PACKAGE}.base"] + sorted({registry[f].__module__ for f in families})
    lines = ['"""The expert families this checkpoint uses, registered on import (written by `mova export` in '
             "place of\nMova's experts package, which imports every family and so every family's library).\"\"\"",
             "", "from __future__ import annotations", ""]
    for home in homes:
        home_module = importlib.import_module(home)
        names = sorted(n for n in getattr(experts, "__all__", [])
                       if getattr(home_module, n, None) is getattr(experts, n) and _defined_in(home_module, n))
        names += sorted(registry[f].__name__ for f in families if registry[f].__module__ == home)
        if names:
            lines.append(f"from {home} import {', '.join(dict.fromkeys(names))}  # noqa: F401")
    return "\n".join(lines) + "\n"


def _defined_in(module: object, name: str) -> bool:
    """Whether ``name`` is ``module``'s own rather than imported into it: classes and functions say where
    they come from; other objects (a registry dict, a type alias) are looked up as top-level assignments."""
    obj = getattr(module, name)
    if isinstance(obj, type) or inspect.isfunction(obj):
        return obj.__module__ == module.__name__
    for node in ast.parse(_source_of(module.__name__)).body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        targets = [node.target] if isinstance(node, ast.AnnAssign) else targets
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return True
    return False


def build_bundle(families: list[str], roots: tuple[str, ...] = ROOT_MODULES, package: str = "mova",
                 generated: dict[str, str] | None = None,
                 excluded: tuple[str, ...] = EXCLUDED_PREFIXES) -> Bundle:
    """Walk ``roots`` and return the flat bundle; ``families`` are the checkpoint's expert families."""
    if generated is None:
        generated = {EXPERTS_PACKAGE: experts_init_source(families)}
    walker = _Walker(package, generated, excluded)
    for root in roots:
        walker.need(root, "(root)")
    files = {f"{name}.py": src for name, src in walker.sources.items()}
    _check_reachable(files, [f"{walker.modules[r]}.py" for r in roots])
    return Bundle(files=files, requirements=dict(sorted(walker.requirements.items())), modules=walker.modules)


def _check_reachable(files: dict[str, str], roots: list[str]) -> None:
    """Every bundled file must be found by transformers' relative-import scan from a root."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen or name not in files:
            continue
        seen.add(name)
        todo += [f"{m}.py" for m in _RELATIVE_IMPORT.findall(files[name])]
    missing = sorted(set(files) - seen)
    if missing:
        raise BundleError(f"transformers would not copy {missing} with the model code: no module imports "
                          "them as `from .name import ...`")


def auto_map(bundle: Bundle) -> dict[str, str]:
    """``config.json``'s ``auto_map`` for the bundle's model, config and processor classes."""
    model = bundle.modules["mova.model.modeling_mova"]
    processor = bundle.modules["mova.model.processing_mova"]
    return {"AutoConfig": f"{model}.MovaConfig", "AutoModelForCausalLM": f"{model}.MovaForCausalLM",
            "AutoModelForImageTextToText": f"{model}.MovaForCausalLM", "AutoProcessor": f"{processor}.MovaProcessor"}

