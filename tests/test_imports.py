"""Import hygiene: light modules stay free of torch, and every third-party import is declared.

The control plane (router, policies, simulator, bench client, configs) must import in a
fraction of a second on a machine without torch's start-up cost, so these tests run each import
in a fresh interpreter under `-X importtime` and look for torch among the modules it loaded.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "banaserve"

# Modules that must import without torch: the control plane the live cluster and the simulator
# share, and everything that only routes, schedules, simulates or measures.
TORCH_FREE_MODULES = [
    "banaserve",
    "banaserve.policies",
    "banaserve.policies.routing",
    "banaserve.bench",
    "banaserve.bench.cli",  # everything `banaserve bench` runs (plot is imported only on --plot)
    "banaserve.bench.plot",
    "banaserve.bench.sweep",
    "banaserve.sim.cost_model",
    "banaserve.sim.model_configs",
    "banaserve.sim.profile_table",
    "banaserve.models.config",
    "banaserve.kv.block_manager",
    "banaserve.engine.request",
    "banaserve.engine.sampling_params",
    "banaserve.engine.config",
    "banaserve.engine.core",
    "banaserve.engine.scheduler",
    "banaserve.cluster.router",
    "banaserve.cluster.handler",
    "banaserve.sim",
    "banaserve.sim.simulator",
    "banaserve.sim.cli",
    "banaserve.sim.setup",
]


def imported_modules(code: str) -> set[str]:
    """Names of the modules a fresh interpreter imports to run `code` (from -X importtime)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # lines look like "import time:       412 |        812 |     torch.version"
    return {m.group(1) for m in re.finditer(r"^import time:[^|]*\|[^|]*\|\s*(\S+)\s*$", proc.stderr, re.M)}


@pytest.mark.parametrize("module", TORCH_FREE_MODULES)
def test_module_imports_without_torch(module):
    loaded = imported_modules(f"import {module}")
    assert module in loaded  # the output was parsed
    assert "torch" not in loaded, f"`import {module}` imports torch"


def test_cli_help_imports_without_torch():
    # `banaserve --help` lists the subcommands; only running one imports its module
    loaded = imported_modules("import sys; from banaserve.cli import main; sys.exit(main(['--help']))")
    assert "banaserve.cli" in loaded
    assert "torch" not in loaded


def test_engine_names_stay_importable_from_the_package():
    code = ("from banaserve import LLM, EngineConfig, LLMEngine, RequestOutput, SamplingParams; "
            "import banaserve; assert banaserve.LLM is LLM and 'LLM' in dir(banaserve)")
    assert "torch" in imported_modules(code)  # the engine does need it, once asked for


def test_unknown_package_attribute_raises():
    import banaserve

    with pytest.raises(AttributeError, match="NoSuchName"):
        banaserve.NoSuchName  # noqa: B018 (the lookup is the test)


# --- declared dependencies ---------------------------------------------------------------------
#
# Every third-party module imported anywhere under banaserve/, at module level or inside a
# function, must come from a distribution in [project].dependencies. Lazy imports are not let off
# with an extra: they are lazy for start-up time (torch, matplotlib), not because the feature is
# optional, and `banaserve profile`, `bench --plot` and `serve` all run from a plain install.
# The "test" extra holds tools for the test suite only, never runtime imports.


def third_party_imports() -> dict[str, list[str]]:
    """Top-level module name -> files under banaserve/ that import it."""
    found: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top != "banaserve" and top not in sys.stdlib_module_names:
                    found.setdefault(top, []).append(str(path.relative_to(ROOT)))
    return found


def normalize(dist: str) -> str:
    """PEP 503 name: case and runs of -_. do not matter."""
    return re.sub(r"[-_.]+", "-", dist).lower()


def declared_dependencies() -> set[str]:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11; requires-python allows 3.10
    with open(ROOT / "pyproject.toml", "rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    return {normalize(re.match(r"[A-Za-z0-9._-]+", d).group(0)) for d in deps}


def test_every_third_party_import_is_a_declared_dependency():
    imports = third_party_imports()
    assert {"torch", "numpy", "fastapi"} <= set(imports)  # the scan sees real imports
    declared = declared_dependencies()
    providers = importlib.metadata.packages_distributions()
    problems = []
    for module, files in sorted(imports.items()):
        dists = {normalize(d) for d in providers.get(module, [])}
        if not dists:
            problems.append(f"{module} (imported by {files[0]}) is not installed: no distribution to check")
        elif not dists & declared:
            problems.append(f"{module} (imported by {files[0]}) comes from {', '.join(sorted(dists))}, "
                            "which pyproject.toml does not declare")
    assert not problems, "\n".join(problems)
