"""One architecture, one file: the registry, class lookups, and a scan of the source tree.

Every supported architecture is described in exactly one file of `sencache/adapters/`, and no
other module branches on an architecture's name or class: not by a class-name string
(`type(m).__name__ == "WanTransformer3DModel"`, `.startswith("Wan")`), not by a short name
(`arch == "wan"`), not by the class itself (`isinstance(m, WanTransformer3DModel)`). Building
an object of a class (a call) is allowed anywhere; the zoo's builders, its registry of fixture
names and its training code name the classes they build and train, and are exempt.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
import torch

from policies.errors import InputError
from sencache.adapters import ADAPTERS, ARCHITECTURES, Architecture, adapter_for, architecture_for, architecture_named

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sencache" / "adapters"
#: what the scan reads: the packages, the CLI and the benchmarks (tests and notebooks name classes freely)
SCANNED = ["sencache", "policies", "store", "calibration", "cli.py", "benchmarks"]
#: the registry lists the description files; the zoo builds and trains the classes it names
EXEMPT = {"sencache/adapters/__init__.py", "calibration/zoo/architectures.py", "calibration/zoo/registry.py",
          "calibration/zoo/train.py"}


def _description_files() -> dict[str, Path]:
    return {a.name: Path(inspect.getsourcefile(type(a))).parent / f"{a.name}.py" for a in ARCHITECTURES}


def test_every_architecture_has_exactly_one_description_file():
    files = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in {"__init__.py", "base.py"})
    assert files == sorted(f"{a.name}.py" for a in ARCHITECTURES)
    assert len({a.name for a in ARCHITECTURES}) == len(ARCHITECTURES)
    for arch in ARCHITECTURES:
        tree = ast.parse((PACKAGE / f"{arch.name}.py").read_text())
        built = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "Architecture"]
        assert len(built) == 1, f"{arch.name}.py must describe exactly one architecture"
        assert inspect.getsourcefile(arch.modulated_input) == str(PACKAGE / f"{arch.name}.py")


def _forbidden() -> tuple[set[str], set[str], set[str]]:
    """(short names, class names, class-name prefixes) of every architecture."""
    names = {a.name for a in ARCHITECTURES}
    classes: set[str] = set()
    prefixes: set[str] = set()
    for arch in ARCHITECTURES:
        own = {arch.class_name, arch.pipeline}
        for module in (inspect.getmodule(arch.modulated_input), inspect.getmodule(arch.transformer_class)):
            # the description's imports, and every module class of the transformer's file (its blocks)
            own |= {v.__name__ for v in vars(module).values() if isinstance(v, type) and issubclass(v, torch.nn.Module)
                    and (module is not inspect.getmodule(arch.transformer_class) or v.__module__ == module.__name__)}
        classes |= own
        prefix = _common_prefix(arch.class_name, arch.pipeline)
        if len(prefix) >= 3:
            prefixes.add(prefix)
    return names, classes, prefixes


def _common_prefix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def branches(source: str, names: set[str], classes: set[str], prefixes: set[str]) -> list[str]:
    """Every place in `source` that names an architecture other than by building an object."""
    tree = ast.parse(source)
    docstrings = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
    called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            s = node.value
            if s.lower() in names or s in classes or s in prefixes:
                found.append(f"line {node.lineno}: string {s!r}")
        elif isinstance(node, ast.Name) and node.id in classes and id(node) not in called:
            found.append(f"line {node.lineno}: class {node.id}")
        elif isinstance(node, ast.Attribute) and node.attr in classes and id(node) not in called:
            found.append(f"line {node.lineno}: class {node.attr}")
    return found


def test_the_scan_sees_each_kind_of_branch():
    names, classes, prefixes = _forbidden()
    bad = (
        'if type(t).__name__ == "WanTransformer3DModel": pass\n'
        'if isinstance(t, CogVideoXTransformer3DModel): pass\n'
        'if type(p).__name__.startswith("LTX"): pass\n'
        'if arch == "wan": pass\n'
        'table = {diffusers.WanPipeline: 1}\n'
    )
    assert len(branches(bad, names, classes, prefixes)) == 5
    fine = '"""Wan and CogVideoX, in a docstring."""\nmodel = WanTransformer3DModel(num_layers=2)\nlog("WanX")\n'
    assert branches(fine, names, classes, prefixes) == []


def test_no_module_outside_the_descriptions_branches_on_an_architecture():
    names, classes, prefixes = _forbidden()
    descriptions = {str(p.relative_to(ROOT)) for p in _description_files().values()}
    offenders = {}
    for entry in SCANNED:
        path = ROOT / entry
        for file in [path] if path.is_file() else sorted(path.rglob("*.py")):
            rel = str(file.relative_to(ROOT))
            if rel in descriptions or rel in EXEMPT:
                continue
            found = branches(file.read_text(), names, classes, prefixes)
            if found:
                offenders[rel] = found
    assert offenders == {}, "describe the architecture in its file in sencache/adapters/ instead"


# --- lookups by class ----------------------------------------------------------------------------


def _tiny_wan() -> torch.nn.Module:
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(patch_size=[1, 2, 2], num_attention_heads=1, attention_head_dim=8, in_channels=4,
                                 out_channels=4, text_dim=8, freq_dim=8, ffn_dim=8, num_layers=1, rope_max_seq_len=8)


def test_a_subclass_is_served_by_its_parents_description():
    from diffusers import WanTransformer3DModel

    class MyWan(WanTransformer3DModel):
        pass

    wan = architecture_named("wan")
    assert architecture_for(_tiny_wan()) is wan
    model = MyWan(patch_size=[1, 2, 2], num_attention_heads=1, attention_head_dim=8, in_channels=4, out_channels=4,
                  text_dim=8, freq_dim=8, ffn_dim=8, num_layers=1, rope_max_seq_len=8)
    assert adapter_for(model) is wan
    assert len(wan.blocks(model)) == 1


def test_a_compiled_transformer_is_served_by_its_originals_description():
    model = _tiny_wan()
    compiled = torch.compile(model)  # an OptimizedModule; nothing compiles until it is called
    assert type(compiled) is not type(model)
    assert architecture_for(compiled) is architecture_named("wan")


def test_a_pipeline_is_served_through_its_transformer_and_others_are_refused():
    class Pipe:
        transformer = _tiny_wan()

    assert architecture_for(Pipe()) is architecture_named("wan")
    with pytest.raises(InputError, match="supported transformers: .*WanTransformer3DModel"):
        architecture_for(torch.nn.Linear(2, 2))
    with pytest.raises(InputError, match="unknown architecture 'sora'"):
        architecture_named("sora")


def test_every_description_says_what_every_stage_needs():
    for arch in ARCHITECTURES:
        assert isinstance(arch, Architecture) and ADAPTERS[arch.class_name] is arch
        assert arch.block_lists and arch.forecast_modules
        assert arch.modulated_input is not None and arch.loop_latents is not None
        assert arch.pipeline_class.__name__ == arch.pipeline
        assert issubclass(arch.transformer_class, torch.nn.Module)
