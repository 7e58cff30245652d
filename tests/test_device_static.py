"""
Device mistakes that a CPU-only machine cannot see at run time, caught by reading the source.

On a CPU both sides of a device mismatch are "cpu", so `torch.multinomial(probs, generator=cpu_generator)`
and `dist.all_reduce(cpu_tensor)` pass every runtime test here -- and crash on the first GPU (CUDA and MPS
generators must match the tensor's device; NCCL has no CPU tensors). The rules (minipost/generation.py):
  1. a torch.Generator is made only by generation.make_generator (on the model's device) or
     generation.index_generator (CPU, index sampling only);
  2. a CPU generator is handed only to CPU-side index sampling (CPU_INDEX_SINKS below, or as the keyword
     `data_rng=`, the project's name for an index generator), never to sampling;
  3. a tensor handed to a collective is built with device= (or derived from a tensor that has one).
The checker is run on every project file (library, scripts, bench), and on snippets of the code as it was
before the rules, which it must flag: a checker that flags nothing would pass the first test forever.
Plus: no import circle inside minipost/, and the library never imports a script.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# calls a CPU (index) generator may be handed to: they draw CPU indices, never touch a model tensor
CPU_INDEX_SINKS = {
    "randint", "randperm",  # torch.randint / torch.randperm of CPU index tensors
    "get_batch",  # train_base.py: torch.randint of window starts
    "Checkpointer",  # saves and restores the generator's state for --resume
}
GENERATOR_MAKERS = {"make_generator", "index_generator"}  # generation.py: the only places a Generator is built
COLLECTIVES = {"all_reduce", "broadcast", "reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter",
               "reduce_scatter_tensor", "all_to_all_single", "send", "recv", "isend", "irecv", "scatter", "gather"}
TENSOR_FACTORIES = {"tensor", "as_tensor", "zeros", "ones", "empty", "full", "arange", "randn", "rand", "linspace"}


def project_files(root: Path = ROOT) -> list[Path]:
    return sorted([*root.glob("*.py"), *(root / "minipost").glob("*.py"), *(root / "bench").glob("*.py")])


def _name(func) -> str:
    """The called name: torch.randint -> 'randint', get_batch -> 'get_batch', a.b.c -> 'c'."""
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def _base_call(node):
    """Follow method chains down to the call they start from: torch.Generator().manual_seed(s) -> the
    torch.Generator() call; torch.as_tensor(x).clone() -> the as_tensor call. Also reports whether the chain
    moves the result somewhere (.to(...), .cuda()), which decides its device after all."""
    moved = False
    while isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Call):
        moved = moved or node.func.attr in ("to", "cuda")
        node = node.func.value
    return node, moved


def _kw(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_cpu_generator(node, cpu_names: set) -> bool:
    """A CPU generator: index_generator(...), torch.Generator() / torch.Generator(device="cpu") (maybe
    .manual_seed'ed), or a name bound to one in this scope."""
    if isinstance(node, ast.Name):
        return node.id in cpu_names
    call, _ = _base_call(node)
    if not isinstance(call, ast.Call):
        return False
    if _name(call.func) == "index_generator":
        return True
    if _name(call.func) == "Generator":
        device = _kw(call, "device") or (call.args[0] if call.args else None)
        return device is None or (isinstance(device, ast.Constant) and device.value == "cpu")
    return False


def _deviceless_tensor(node, deviceless_names: set) -> bool:
    if isinstance(node, ast.Name):
        return node.id in deviceless_names
    call, moved = _base_call(node)
    return (isinstance(call, ast.Call) and _name(call.func) in TENSOR_FACTORIES and isinstance(call.func, ast.Attribute)
            and _kw(call, "device") is None and not moved)


def check_source(source: str, filename: str = "<source>") -> list[str]:
    """Every violation of the three rules in one file, as 'file:line: what'."""
    tree = ast.parse(source, filename)
    problems = []
    scopes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    for scope in scopes:
        # the names this scope binds to CPU generators / to tensors built without device= (in source order)
        cpu_names, deviceless = set(), set()
        # this scope's own nodes, in source order (a nested function is a scope of its own)
        inner = {id(x) for f in ast.walk(scope) if f is not scope and isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                 for x in ast.walk(f)}
        nodes = sorted((n for n in ast.walk(scope) if id(n) not in inner and hasattr(n, "lineno")),
                       key=lambda n: (n.lineno, n.col_offset))
        for node in nodes:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                target = node.targets[0].id
                (cpu_names.add if _is_cpu_generator(node.value, cpu_names) else cpu_names.discard)(target)
                (deviceless.add if _deviceless_tensor(node.value, deviceless) else deviceless.discard)(target)
            if not isinstance(node, ast.Call):
                continue
            called = _name(node.func)
            enclosing = scope.name if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef)) else ""
            # rule 1: generators are made in generation.py's two helpers only
            if called == "Generator" and enclosing not in GENERATOR_MAKERS:
                problems.append(f"{filename}:{node.lineno}: torch.Generator made outside generation.make_generator / "
                                "index_generator (make it on the model's device with make_generator)")
            # rule 2: a CPU generator reaches only CPU index sampling
            if called not in CPU_INDEX_SINKS:
                # data_rng: the project's name for an index generator, passed on to a function that draws indices
                handed = [*node.args, *(k.value for k in node.keywords if k.arg != "data_rng")]
                for arg in handed:
                    if _is_cpu_generator(arg, cpu_names):
                        problems.append(f"{filename}:{node.lineno}: a CPU generator is handed to {called}(), which "
                                        "is not CPU index sampling: sampling needs make_generator(device, seed)")
            # rule 3: what a collective reduces lives on the process's device
            if called in COLLECTIVES and isinstance(node.func, ast.Attribute):
                for arg in node.args[:1]:
                    if _deviceless_tensor(arg, deviceless):
                        problems.append(f"{filename}:{node.lineno}: a tensor built without device= reaches "
                                        f"{called}() (NCCL has no CPU tensors): build it on the process's device")
    return problems


def test_the_project_follows_the_device_rules():
    problems = [p for f in project_files() for p in check_source(f.read_text(), str(f.relative_to(ROOT)))]
    assert not problems, "\n".join(problems)
    assert len(project_files()) > 20  # the glob found the project (a checker that reads nothing passes anything)


# The code as it was before the rules (minipost/evaluate.py, train_rm.py, minipost/distributed.py): each snippet
# crashed on a GPU at run time and passed every CPU test.
OLD_EVALUATE = '''
def sample_rounds(m):
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return [generate_responses(m, tok, instructions, device=device, temperature=1.0, generator=gen)
            for _ in range(n_samples)]
'''
OLD_POLICY_PAIRS = '''
def policy_pairs(policy, seed, device):
    gen = torch.Generator().manual_seed(seed)
    return generate_responses(policy, tok, xs, device=device, temperature=1.0, generator=gen)
'''
OLD_SUM_ALL = '''
def sum_all(x):
    t = torch.as_tensor(x, dtype=torch.float64).clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.item()
'''
OLD_MAX_DIFF = '''
def max_abs_param_diff(diff):
    t = torch.tensor(diff, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
'''


def test_the_checker_flags_the_old_code():
    for snippet, what in [(OLD_EVALUATE, "CPU generator is handed to generate_responses"),
                          (OLD_POLICY_PAIRS, "CPU generator is handed to generate_responses"),
                          (OLD_SUM_ALL, "reaches all_reduce"), (OLD_MAX_DIFF, "reaches all_reduce")]:
        problems = check_source(snippet)
        assert any(what in p for p in problems), (snippet, problems)
    assert any("torch.Generator made outside" in p for p in check_source(OLD_EVALUATE))


def test_the_checker_accepts_the_rules():
    good = '''
def make_generator(device, seed):
    return torch.Generator(device=torch.device(device)).manual_seed(seed)

def index_generator(seed):
    return torch.Generator(device="cpu").manual_seed(seed)

def run(device, seed, n):
    data_rng = index_generator(seed)
    picks = torch.randint(0, n, (4,), generator=data_rng)
    perm = torch.randperm(4, generator=data_rng).to(device)
    gen = make_generator(device, seed)
    out = generate_responses(model, tok, xs, device=device, generator=gen)
    t = torch.as_tensor(3.0, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    u = torch.tensor(1.0).to(device)
    dist.all_reduce(u)
    saver = Checkpointer(args, 10, model, save, data_rng=data_rng, sample_rng=gen)
'''
    assert check_source(good) == []
    # a name rebound to a device generator is no longer a CPU one
    assert check_source("def f(d):\n    g = index_generator(0)\n    g = make_generator(d, 0)\n    sample(generator=g)\n") == []


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            if node.module == "minipost":
                out |= {f"minipost.{a.name}" for a in node.names}
    return out


def test_the_library_has_no_import_circle_and_imports_no_script():
    modules = {f"minipost.{p.stem}": p for p in (ROOT / "minipost").glob("*.py") if p.stem != "__init__"}
    scripts = {p.stem for p in ROOT.glob("*.py")}
    graph = {}
    for name, path in modules.items():
        imported = _imports(path)
        assert not imported & scripts, f"{path.name} imports the script(s) {sorted(imported & scripts)}"
        graph[name] = {m for m in imported if m in modules and m != name}

    def cycle_from(node, stack, seen):
        for nxt in sorted(graph[node]):
            if nxt in stack:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in seen:
                seen.add(nxt)
                found = cycle_from(nxt, stack + [nxt], seen)
                if found:
                    return found
        return None

    for start in sorted(graph):
        cycle = cycle_from(start, [start], {start})
        assert cycle is None, "import circle: " + " -> ".join(cycle)
    assert "minipost.generation" in graph["minipost.evaluate"]  # the graph is read (a sanity check)
