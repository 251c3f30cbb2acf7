"""The library's layers, stated as a table and kept: no module imports a later layer (an AST scan of every
import, including those inside functions). ARCHITECTURE.md's "Data flows one way" states the same rules."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = "paresseg_jax"

# Bottom to top. A module may import its own layer and those before it. The longest matching name decides
# (``paresseg_jax.infer.predict`` is in "inference core", the rest of ``paresseg_jax.infer`` in "inference").
LAYERS = {
    "foundation": ["errors", "atomic", "names", "json_values", "config_defaults", "config_files", "extras",
                   "flag_checks", "compilation_cache", "huge_pages", "worker_processes", "workdir", "absent_phases", "stage_times"],
    # numbers on masks and arrays; the per-case record and summary.json shared by inference and evaluation
    "numerics": ["ops", "losses", "lesions", "metrics", "lesion_metrics", "postprocess", "summary"],
    "models": ["models", "model_io", "exported"],
    "data": ["data", "preflight"],  # files -> case -> cache -> Grain batches; preflight checks what they read
    "run setup": ["runs"],  # model building, cache, splits and fold cases of a run (train, scoring, benchmarks)
    # the forward pass over a volume: what training's validation and every prediction share
    "inference core": ["infer.predict", "infer.batches", "infer.exact_crop", "infer.tiling", "infer.ensemble",
                       "infer.liver_stage", "infer.cascade"],
    "training": ["train"],
    "inference": ["infer"],  # studies, folders, DICOM SEG, overlays, resumable runs
    "evaluation": ["evaluate"],
    "tools": ["benchmarks", "interop"],
    # what runs whole experiments (fold orchestration, cross-validation, the demo, the ablation) and the
    # launchers' helpers
    "orchestration": ["experiments", "cli"],
}
# configs/ and launch/, under their source and installed names: the library never imports them.
OUTSIDE_LIBRARY = ("configs", "launch", "paresseg_jax_configs", "paresseg_jax_launch")
RANK = {f"{LIBRARY}.{name}": rank for rank, names in enumerate(LAYERS.values()) for name in names}
RANK[LIBRARY] = len(LAYERS) - 1  # the package's __init__

def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(source: str, module: str) -> set[str]:
    """Every module ``source`` imports (``from a import b``: ``a.b`` as well, in case ``b`` is a module)."""
    package = module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def rank(module: str) -> int | None:
    """The layer of a library module (None: outside the library, or not a module such as an imported name)."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in RANK:
            return RANK[".".join(parts[:end])]
    return None


def violations(module: str, imported: set[str]) -> list[str]:
    """The rules ``module`` breaks by importing ``imported``, one line each."""
    found = []
    own = rank(module)
    for target in sorted(imported):
        top = target.split(".")[0]
        if top in OUTSIDE_LIBRARY:
            found.append(f"{module} imports {target}: the library never imports configs or launch")
            continue
        if top != LIBRARY or target == LIBRARY:
            continue
        if target.startswith(f"{LIBRARY}.train.loop") and not module.startswith(f"{LIBRARY}.train"):
            found.append(f"{module} imports {target}: nothing outside train imports the training loop")
        if module.startswith(f"{LIBRARY}.infer") and target.startswith((f"{LIBRARY}.train", f"{LIBRARY}.evaluate")):
            found.append(f"{module} imports {target}: inference imports neither training nor evaluation")
        if module.startswith(f"{LIBRARY}.evaluate.scoring") and target.startswith(f"{LIBRARY}.train"):
            found.append(f"{module} imports {target}: scoring never imports training")
        theirs = rank(target)
        if own is not None and theirs is not None and theirs > own:
            names = list(LAYERS)
            found.append(f"{module} ({names[own]}) imports {target} ({names[theirs]}), a later layer")
    return found


def _library_modules():
    return sorted((ROOT / LIBRARY).rglob("*.py"))


@pytest.mark.parametrize("path", _library_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_imports_a_later_layer(path):
    module = module_name(path)
    assert rank(module) is not None, f"{module} is in no layer: add it to LAYERS"
    assert violations(module, imports(path.read_text(encoding="utf-8"), module)) == []


@pytest.mark.parametrize("module, source, broken", [
    ("paresseg_jax.metrics", "from paresseg_jax.data import cache", "a later layer"),
    ("paresseg_jax.infer.folder", "from paresseg_jax.evaluate import tables", "neither training nor evaluation"),
    ("paresseg_jax.infer.study", "import paresseg_jax.train.step", "neither training nor evaluation"),
    ("paresseg_jax.evaluate.tables", "def f():\n    from paresseg_jax.train.loop import x", "training loop"),
    ("paresseg_jax.evaluate.scoring", "from paresseg_jax.train import validate", "scoring never imports"),
    ("paresseg_jax.data.cache", "from configs import paresseg", "never imports configs or launch"),
    ("paresseg_jax.cli", "import paresseg_jax_launch.train", "never imports configs or launch"),
    ("paresseg_jax.infer.predict", "from . import folder", "a later layer"),
])
def test_a_broken_rule_is_found(module, source, broken):
    assert any(broken in line for line in violations(module, imports(source, module)))


def test_allowed_imports_pass():
    source = "from paresseg_jax import metrics\nfrom paresseg_jax.infer.predict import predict_volume\nimport numpy"
    assert violations("paresseg_jax.train.validate", imports(source, "paresseg_jax.train.validate")) == []
